/**
 * Canary reloads (safe rollout): the options, their checks, routing, and
 * the decision rule. The Plugin (plugin.ts) owns the versions and acts on
 * what this decides. Modelled on canary analysis in Argo Rollouts, Flagger
 * and Kayenta: a share of calls goes to the new build, which is compared
 * with the stable one over the same window. JS thread only.
 */
import { createHash } from 'crypto'
import { rangeError, typeError } from '../errors'
import { checkKeys } from '../options'
import type { CallMetrics } from '../metrics'

export interface RolloutOptions {
  /** The share of calls the new build gets while it is a canary (default 0.05; 0 < canary < 1). */
  canary?: number
  /** Canary calls before the decision (default 1000). */
  minCalls?: number
  /** The decision at the latest after this long, whatever the calls (default 60000). */
  maxMs?: number
  /** The canary's error rate above this rolls it back (default 0.01). */
  maxErrorRate?: number
  /** The canary's p99 above this × the stable p99 rolls it back (default 2). */
  maxLatencyRatio?: number
  /** A call that failed on the canary is sent once to the stable version (default false: for idempotent calls only). */
  retry?: boolean
}

const ROLLOUT_KEYS: Record<keyof RolloutOptions, true> = { canary: true, minCalls: true, maxMs: true, maxErrorRate: true, maxLatencyRatio: true, retry: true }

export type Rollout = Required<RolloutOptions>

/** Checks options.rollout and fills in the defaults. */
export function rolloutOf (o: RolloutOptions | undefined): Rollout | null {
  if (o === undefined) return null
  if (o === null || typeof o !== 'object') throw typeError('options.rollout must be an object')
  checkKeys(o, ROLLOUT_KEYS, 'options.rollout')
  const num = (name: keyof RolloutOptions, dflt: number, ok: (x: number) => boolean, what: string): number => {
    const x = o[name] ?? dflt
    if (typeof x !== 'number') throw typeError(`options.rollout.${name} must be a number`)
    if (!ok(x)) throw rangeError(`options.rollout.${name} must be ${what}`)
    return x
  }
  if (o.retry !== undefined && typeof o.retry !== 'boolean') throw typeError('options.rollout.retry must be a boolean')
  return {
    canary: num('canary', 0.05, x => x > 0 && x < 1, 'above 0 and below 1'),
    minCalls: num('minCalls', 1000, x => Number.isInteger(x) && x >= 1, 'an integer >= 1'),
    maxMs: num('maxMs', 60000, x => x > 0, 'above 0'),
    maxErrorRate: num('maxErrorRate', 0.01, x => x >= 0 && x <= 1, 'from 0 to 1'),
    maxLatencyRatio: num('maxLatencyRatio', 2, x => x >= 1, '>= 1'),
    retry: o.retry ?? false
  }
}

/** A sticky key's place in [0, 1): the same key, the same version, for the whole canary period. */
export function keyPoint (key: string | number): number {
  const h = createHash('sha1').update(String(key)).digest()
  return h.readUInt32LE(0) / 0x100000000
}

/**
 * Deterministic routing by count: call n goes to the canary when the
 * running share crosses an integer, so exactly floor(n × canary) of the
 * first n calls do, spread evenly.
 */
export function countGoesToCanary (n: number, share: number): boolean {
  return Math.floor((n + 1) * share) > Math.floor(n * share)
}

/** Stable service-time p99s below this count as this (ms). */
export const SERVICE_FLOOR_MS = 0.05

/** The rule: null (promote) or why the canary is rolled back. */
export function judge (r: Rollout, canary: CallMetrics, stable: CallMetrics): string | null {
  if (canary.calls > 0 && canary.errorRate > r.maxErrorRate) {
    return `error rate ${(canary.errorRate * 100).toFixed(2)}% above maxErrorRate ${(r.maxErrorRate * 100).toFixed(2)}% (stable: ${(stable.errorRate * 100).toFixed(2)}%)`
  }
  // Service times (taken to answered), not call-to-settle latencies: a
  // canary with a small share of the calls has its poll thread parked more
  // often, and pays wake-ups the stable version does not (identical builds
  // measured 2-40x apart in p99 on a 2-core VM). Below the floor, a ratio of
  // microseconds is noise.
  const s = canary.service
  const base = Math.max(stable.service.p99Ms, SERVICE_FLOOR_MS)
  if (s.count > 0 && stable.service.count > 0 && s.p99Ms > r.maxLatencyRatio * base) {
    return `service-time p99 ${s.p99Ms} ms above maxLatencyRatio ${r.maxLatencyRatio} × the stable p99 ${stable.service.p99Ms} ms`
  }
  return null
}
