/**
 * PolicyServices: the configured policy services by stage, asked one after the other (configuration
 * order) until one answer ends the stage, and their answers made one verdict (policy-action.ts).
 */
import type { Logger } from 'pino';
import { parseDuration } from '../util/duration.js';
import type { Metrics } from '../observability/metrics.js';
import { endsStage, evaluatePolicyAnswers, type ServiceAnswer, type StageVerdict } from './policy-action.js';
import { PolicyServiceClient } from './policy-client.js';
import type { PolicyRequestFacts } from './policy-request.js';
import { parseServiceAddress, serviceName, type PolicyServiceConfig } from './schema.js';

export type PolicyStage = 'rcpt' | 'data';

export type PolicyStageResult = StageVerdict & { answers: ServiceAnswer[] };

export class PolicyServicesConfigError extends Error {
  readonly code = 'RG_ERR_CONFIG_POLICY_SERVICE';
}

export class PolicyServices {
  private readonly byStage: Record<PolicyStage, PolicyServiceClient[]> = { rcpt: [], data: [] };
  /** Services that ask about trusted clients too (trusted: ask). */
  private readonly askTrusted = new Set<PolicyServiceClient>();

  constructor(configs: readonly PolicyServiceConfig[], deps: { metrics?: Metrics; log?: Logger } = {}) {
    const names = new Set<string>();
    configs.forEach((c, i) => {
      const addr = parseServiceAddress(c.address);
      if (!addr) throw new PolicyServicesConfigError(`policyServices.${i}.address: want HOST:PORT, got ${JSON.stringify(c.address)}`);
      const name = serviceName(c);
      if (names.has(name)) throw new PolicyServicesConfigError(`policyServices.${i}: a second service named ${JSON.stringify(name)} (give each a distinct name)`);
      names.add(name);
      const client = new PolicyServiceClient({
        name,
        host: addr.host,
        port: addr.port,
        timeoutMs: parseDuration(c.timeout ?? '10s'),
        onError: c.onError ?? 'tempfail',
        maxConnections: c.maxConnections ?? 4,
        ...(c.context !== undefined ? { policyContext: c.context } : {}),
        ...(deps.metrics ? { metrics: deps.metrics } : {}),
        ...(deps.log ? { log: deps.log } : {}),
      });
      this.byStage[c.stage ?? 'rcpt'].push(client);
      if (c.trusted === 'ask') this.askTrusted.add(client);
    });
  }

  has(stage: PolicyStage): boolean {
    return this.byStage[stage].length > 0;
  }

  /** Would a client (trusted or not) be asked about at this stage? */
  asks(stage: PolicyStage, trusted: boolean): boolean {
    return this.applicable(stage, trusted).length > 0;
  }

  /** The services of a stage a client is asked about, by name (for the dry-run check). */
  names(stage: PolicyStage, trusted = false): string[] {
    return this.applicable(stage, trusted).map((c) => c.name);
  }

  private applicable(stage: PolicyStage, trusted: boolean): PolicyServiceClient[] {
    return trusted ? this.byStage[stage].filter((c) => this.askTrusted.has(c)) : this.byStage[stage];
  }

  /**
   * Ask the stage's services about one request (services with `trusted: skip` are not asked about a
   * trusted client); `subject` is the recipient at the RCPT stage.
   */
  async evaluate(stage: PolicyStage, facts: PolicyRequestFacts, subject: string, trusted = false): Promise<PolicyStageResult> {
    const answers: ServiceAnswer[] = [];
    for (const client of this.applicable(stage, trusted)) {
      const a = await client.ask(facts);
      answers.push(a);
      if (endsStage(a)) break;
    }
    return { ...evaluatePolicyAnswers(facts.protocolState, subject, answers), answers };
  }

  close(): void {
    for (const c of [...this.byStage.rcpt, ...this.byStage.data]) c.close();
  }
}
