// A consumer's view of the published declarations: compiled by `npm test`
// (tsc -p test/types, the repository's TypeScript) and by the pack check
// against the packed tarball under TypeScript 5 and 7 with the config
// `tsc --init` writes. Each @ts-expect-error line must fail to compile.
import { EventEmitter, once } from 'node:events'
import { DlhostError, inspect, load, open, reloadable } from 'dlhost'
import type { DrainedEvent, InspectReport, IsolatedRuntime, Plugin, ReloadEvent, Runtime, StuckEvent } from 'dlhost'

export async function use (so: string): Promise<void> {
  const lib = open(so, { pin: false })
  const pinned: boolean = lib.pinned
  lib.release()

  const rt: Runtime = await load(so, 'cfg', { maxQueue: 16 })
  const out: Buffer = await rt.call('hi', { timeoutMs: 100, signal: AbortSignal.timeout(50) })
  // Level 5: messages, streams, the counts.
  rt.on('message', (m: Buffer) => { console.log(m.length) })
  for await (const m of rt.messages({ highWaterMark: 64 })) { console.log(m.byteLength); break }
  for await (const chunk of rt.stream('big', { highWaterMark: 8, timeoutMs: 1000 })) console.log(chunk.length)
  const batch: Array<Buffer | DlhostError> = await rt.callBatch(['a', new Uint8Array(2)], { timeoutMs: 100 })
  for (const r of batch) if (r instanceof DlhostError) console.log(r.code)
  const refused: number = rt.stats.messagesRefused
  console.log(refused)
  // @ts-expect-error a message is a Buffer
  rt.on('message', (m: string) => { console.log(m) })
  await rt.unload()

  const iso: IsolatedRuntime = await load(so, null, { isolate: 'process', limits: { memoryMb: 64 } })
  iso.on('crash', err => { const code: string = err.code; console.log(code) })
  await iso.unload()

  const p: Plugin = await reloadable(so, { level: 1 }, { settleMs: 50, watch: { poll: 100 } })
  p.on('reload', (ev) => { const ms: number = ev.ms; const seq: number = ev.to.seq; console.log(ms, seq) })
  p.on('reload', (ev: ReloadEvent) => { console.log(ev.strategy) })
  p.once('drained', (ev: DrainedEvent) => { console.log(ev.version.sha256) })
  p.on('stuck', (ev: StuckEvent) => { console.log(ev.reason) })
  p.on('error', err => { const code: string = err.code; console.log(code, err.message) })
  p.on('message', (m, { seq }) => { const n: number = seq; console.log(m.length, n) })
  p.on('reload', (ev) => { const pause: number | undefined = ev.state?.pauseMs; console.log(pause) })
  const state: Buffer = await p.exportState()
  p.on('rollback', ev => { const rate: number = ev.canary.errorRate; console.log(rate, ev.reason) })
  const m = p.metrics()[0]
  console.log(m?.window.latency.p99Ms, m?.life.service.p50Ms)
  await reloadable(so, null, { rollout: { canary: 0.1, minCalls: 500, retry: true } })
  await p.call('x', { key: 'user-1' })
  await reloadable(so, null, { initialState: state, stateRejected: 'fresh' })
  // @ts-expect-error stateRejected takes 'rollback' or 'fresh'
  await reloadable(so, null, { stateRejected: 'keep' })
  p.off('error', () => {})
  const [next] = await once(p, 'reload') // still an EventEmitter to Node's helpers
  const emitter: EventEmitter = p
  console.log(next, emitter)

  // @ts-expect-error a listener of the wrong shape
  p.on('reload', (ev: { nope: number }) => { console.log(ev.nope) })
  // @ts-expect-error an event Plugin never emits
  p.on('relaod', () => {})
  // @ts-expect-error emit with the wrong payload
  p.emit('drained', 42)
  // @ts-expect-error an unknown option key
  await reloadable(so, null, { settelMs: 5 })
  // @ts-expect-error isolate takes 'process' or false
  await load(so, null, { isolate: 'thread' })

  const report: InspectReport = await inspect(so)
  await p.close()
  try {
    await rt.call('after unload')
  } catch (err) {
    if (err instanceof DlhostError) console.log(err.code, err.path)
  }
  console.log(pinned, out, report.verdict)
}
