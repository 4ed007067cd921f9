/**
 * Per-version call metrics (safe rollout): counts by outcome, kept by the
 * Plugin where each call settles, and latencies from submit to settle,
 * counted natively into a log-linear histogram (csrc/histogram.h: one clock
 * read per batch on each side, nothing per call in JS). Snapshots and their
 * differences give a window: the last ~10 s, or the span of a canary.
 * JS thread only.
 */
import { C } from './binding'
import { DlhostError } from './errors'

const SUB_BITS = C.HIST_SUB_BITS
const SUB = 1 << SUB_BITS
const MIN_LOG = C.HIST_MIN_LOG
const MAX_LOG = C.HIST_MAX_LOG
/** [count, sum ns, max ns, buckets…], twice: latency (submit to settle), then service time (taken to answered). */
const HEADER = 3
const BUCKETS = (MAX_LOG - MIN_LOG + 2) * SUB
/** @internal Where the service-time histogram starts. */
export const SERVICE = HEADER + BUCKETS

/** The upper bound (ns) of histogram bucket i. */
function bucketUpperNs (i: number): number {
  const group = Math.floor(i / SUB)
  const sub = i % SUB
  if (group === 0) return (sub + 1) * 2 ** (MIN_LOG - SUB_BITS)
  const log = MIN_LOG + group - 1
  return 2 ** log + (sub + 1) * 2 ** (log - SUB_BITS)
}

export interface LatencySummary {
  /** Calls whose latency was recorded. */
  count: number
  meanMs: number
  /** Upper bounds of the buckets the quantiles fall in: within 12.5 % above. */
  p50Ms: number
  p90Ms: number
  p99Ms: number
  /** Exact over the whole life; for a window, the bucket bound. */
  maxMs: number
}

export interface CallMetrics {
  /** Calls settled (answered, failed or given up on). */
  calls: number
  errors: {
    /** The plugin answered rc != 0 (ERR_PLUGIN), or never answered (ERR_ABORTED). */
    plugin: number
    /** The isolated child died under the call (ERR_PLUGIN_CRASHED). */
    crash: number
    /** No answer within timeoutMs (ERR_TIMEOUT). */
    timeout: number
    /** Any other failure (ERR_QUEUE_FULL, ERR_RUNTIME_UNLOADED, …). */
    other: number
  }
  /** errors / calls (0 without calls). */
  errorRate: number
  inFlight: number
  /** From call() to settle, as the caller sees it (queueing and wake-ups included). */
  latency: LatencySummary
  /** From the plugin taking the call to its answer: the build's own cost. Canary analysis compares this. */
  service: LatencySummary
}

/** @internal Counts of one version, where its calls settle. */
export class Counts {
  ok = 0
  plugin = 0
  crash = 0
  timeout = 0
  other = 0

  settled (err: unknown): void {
    const code = err instanceof DlhostError ? err.code : undefined
    if (code === 'ERR_PLUGIN' || code === 'ERR_ABORTED') this.plugin++
    else if (code === 'ERR_PLUGIN_CRASHED' || code === 'ERR_CRASH_LOOP') this.crash++
    else if (code === 'ERR_TIMEOUT') this.timeout++
    else this.other++
  }
}

/** @internal A copy of a version's counts and histogram at one moment. */
export interface Snapshot {
  at: number
  counts: Counts
  hist: Float64Array | null
}

/** @internal */
export function snapshot (counts: Counts, hist: Float64Array | null): Snapshot {
  const c = new Counts()
  Object.assign(c, counts)
  return { at: performance.now(), counts: c, hist: hist === null ? null : hist.slice() }
}

/** @internal The metrics between two snapshots (`from` null: the whole life). */
export function metricsBetween (now: Snapshot, from: Snapshot | null, inFlight: number): CallMetrics {
  const d = (k: 'ok' | 'plugin' | 'crash' | 'timeout' | 'other'): number => now.counts[k] - (from?.counts[k] ?? 0)
  const errors = { plugin: d('plugin'), crash: d('crash'), timeout: d('timeout'), other: d('other') }
  const failed = errors.plugin + errors.crash + errors.timeout + errors.other
  const calls = d('ok') + failed
  const h = now.hist
  const b = from?.hist ?? null
  return { calls, errors, errorRate: calls === 0 ? 0 : failed / calls, inFlight, latency: latencyBetween(h, b), service: latencyBetween(h, b, SERVICE) }
}

/** @internal The summary of the histogram at `offset` in h (minus base, a snapshot of h). */
export function latencyBetween (h: Float64Array | null, base: Float64Array | null, offset = 0): LatencySummary {
  const empty = { count: 0, meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, maxMs: 0 }
  if (h === null) return empty
  const at = (i: number): number => (h[offset + i] as number) - (base === null ? 0 : base[offset + i] as number)
  const count = at(0)
  if (count <= 0) return empty
  const q = (p: number): number => {
    const rank = Math.ceil(p * count)
    let seen = 0
    for (let i = 0; i < BUCKETS; i++) {
      seen += at(HEADER + i)
      if (seen >= rank) return bucketUpperNs(i)
    }
    return bucketUpperNs(BUCKETS - 1)
  }
  let maxNs: number
  if (base === null) maxNs = h[offset + 2] as number
  else {
    maxNs = 0
    for (let i = BUCKETS - 1; i >= 0; i--) if (at(HEADER + i) > 0) { maxNs = bucketUpperNs(i); break }
  }
  const ms = (ns: number): number => Math.round(ns / 1e3) / 1e3
  return { count, meanMs: ms(at(1) / count), p50Ms: ms(q(0.5)), p90Ms: ms(q(0.9)), p99Ms: ms(q(0.99)), maxMs: ms(maxNs) }
}
