// Adaptive spinning (csrc/queue.h): when calls have been arriving further
// apart than the poller spin budget, a waiting poll thread parks at once
// instead of spinning the budget out; calls back to back bring the spinning
// back. Behaviour, not timing: the poll thread's own CPU (schedstat) and the
// arrival-gap estimate (stats.callGapNs).
import t from 'tap'
import fs from 'fs'
import path from 'path'
import { load, type Runtime } from '../lib/index'
import { examples } from './lib/helpers'

const BUDGET = 50000 // the default poller spin, ns
const tids = (): Set<string> => new Set(fs.readdirSync('/proc/self/task'))
const cpuOf = (ids: string[]): number => ids.reduce((n, id) => {
  try { return n + Number(fs.readFileSync(`/proc/self/task/${id}/schedstat`, 'utf8').split(' ')[0]) } catch { return n }
}, 0)
const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

/** A runtime and the threads it started (its owner and poll threads). */
async function withThreads (cfg: string): Promise<{ rt: Runtime, threads: string[] }> {
  const before = tids()
  const rt = await load(path.join(examples, 'libecho_host.so'), cfg) as Runtime
  await rt.call('warm')
  return { rt, threads: [...tids()].filter(id => !before.has(id)) }
}

/** CPU ns of `threads` while 100 calls come 2 ms apart. */
async function sparse (rt: Runtime, threads: string[]): Promise<number> {
  for (let i = 0; i < 10; i++) { await rt.call('x'); await sleep(2) } // the estimate settles
  const c0 = cpuOf(threads)
  for (let i = 0; i < 100; i++) { await rt.call('x'); await sleep(2) }
  return cpuOf(threads) - c0
}

t.test('sparse calls: the poll thread parks at once instead of spinning out its budget; setSpin() is the override', async t => {
  const a = await withThreads('adaptive')
  t.teardown(() => a.rt.unload())
  const parks0 = a.rt.stats.parksAtOnce
  const cpu = await sparse(a.rt, a.threads)
  t.ok(a.rt.stats.callGapNs > BUDGET, `the gap estimate is above the budget (${Math.round(a.rt.stats.callGapNs / 1000)} us)`)
  t.ok(a.rt.stats.parksAtOnce - parks0 >= 100, `the waits parked at once (${a.rt.stats.parksAtOnce - parks0} for 110 sparse calls)`)
  // A poll thread that spun its 50 us out after each call would have burnt
  // at least that; a parked one pays its wake-ups only.
  t.ok(cpu < 100 * BUDGET, `${Math.round(cpu / 100 / 1000)} us of poll-thread CPU a call, under the 50 us budget`)
  const f = await withThreads('forced')
  t.teardown(() => f.rt.unload())
  f.rt.setSpin(undefined, BUDGET) // the override: spin the budget out on every wait
  const before = f.rt.stats.parksAtOnce
  await sparse(f.rt, f.threads)
  t.equal(f.rt.stats.parksAtOnce, before, 'with setSpin() every wait spins first')
  f.rt.setSpin(undefined, -1) // the default again
  await sparse(f.rt, f.threads)
  t.ok(f.rt.stats.parksAtOnce - before >= 100, 'setSpin(, -1) brings the adaptive rule back')
})

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]
/** A runtime whose calls have been sparse so far: its rule says park. */
async function sparseFirst (t: Tap, cfg: string): Promise<Runtime> {
  const { rt } = await withThreads(cfg)
  t.teardown(() => rt.unload())
  for (let i = 0; i < 20; i++) { await rt.call('x'); await sleep(2) }
  t.ok(rt.stats.callGapNs > BUDGET, 'parking while sparse')
  return rt
}

t.test('calls coming close together bring the spinning back', async t => {
  const rt = await sparseFirst(t, 'burst')
  // A burst (64 in flight): the gap per call is a fraction of a microsecond.
  await Promise.all(Array.from({ length: 64 }, async () => { for (let i = 0; i < 50; i++) await rt.call('y') }))
  const parks = rt.stats.parksAtOnce
  await Promise.all(Array.from({ length: 64 }, async () => { for (let i = 0; i < 50; i++) await rt.call('z') }))
  t.ok(rt.stats.parksAtOnce - parks < 320, `waits spin again: ${rt.stats.parksAtOnce - parks} of 3200 calls parked at once (gap estimate ${Math.round(rt.stats.callGapNs / 1000)} us)`)
})

t.test('a pool of poll threads: the ones woken for nothing park again instead of spinning', async t => {
  // echo-native runs two threads on dlhost_task_poll_batch; a notify wakes
  // every parked poller, and only one gets the call.
  const before = tids()
  const rt = await load(path.join(examples, 'libecho_native.so'), 'threads=2') as Runtime
  t.teardown(() => rt.unload())
  await rt.call('warm')
  const pool = [...tids()].filter(id => !before.has(id))
  for (let i = 0; i < 10; i++) { await rt.call('x'); await sleep(2) }
  const c0 = pool.map(id => cpuOf([id]))
  for (let i = 0; i < 100; i++) { await rt.call('x'); await sleep(2) }
  const each = pool.map((id, i) => cpuOf([id]) - (c0[i] as number))
  // Spinning its budget out after each wake-up, one thread would burn at
  // least 50 us a call; parked again, each pays its wake-ups only.
  t.ok(each.every(ns => ns < 100 * BUDGET), `poll-thread CPU a call: ${each.map(ns => Math.round(ns / 100 / 1000)).join(', ')} us`)
})

t.test('the JS side: no spin for an answer to sparse calls, spinning back to back; setSpin() is the override', async t => {
  const { rt } = await withThreads('js-side')
  t.teardown(() => rt.unload())
  for (let i = 0; i < 10; i++) { await rt.call('x'); await sleep(2) }
  const p0 = rt.stats.jsParksAtOnce
  for (let i = 0; i < 100; i++) { await rt.call('x'); await sleep(2) }
  t.ok(rt.stats.jsParksAtOnce - p0 >= 95, `sparse: ${rt.stats.jsParksAtOnce - p0} of 100 calls waited without a spin`)
  // Back to back: one call in flight, the next made as soon as it answers.
  for (let i = 0; i < 2000; i++) await rt.call('y')
  const p1 = rt.stats.jsParksAtOnce
  for (let i = 0; i < 2000; i++) await rt.call('y')
  t.ok(rt.stats.jsParksAtOnce - p1 < 200, `back to back: ${rt.stats.jsParksAtOnce - p1} of 2000 calls waited without a spin`)
  const f = await withThreads('js-forced')
  t.teardown(() => f.rt.unload())
  f.rt.setSpin(BUDGET) // the JS side's budget, spent on every wait
  const p2 = f.rt.stats.jsParksAtOnce
  for (let i = 0; i < 30; i++) { await f.rt.call('x'); await sleep(2) }
  t.equal(f.rt.stats.jsParksAtOnce, p2, 'with setSpin(jsSpinNs) the JS side spins on every wait')
  f.rt.setSpin(-1)
  for (let i = 0; i < 30; i++) { await f.rt.call('x'); await sleep(2) }
  t.ok(f.rt.stats.jsParksAtOnce - p2 >= 25, 'setSpin(-1) brings the adaptive rule back')
})

t.test('a caller that waits for each answer is not sparse, however long each round trip takes', async t => {
  // Each call takes 1 ms in the plugin: calls reach the queue 1 ms apart,
  // but the caller sends the next one as soon as it has the answer. Counted
  // from the last arrival, such a caller looked sparse; so did any
  // sequential caller once a parked poller's wake-ups made its round trips
  // longer than the budget, and it stayed slow.
  const rt = await sparseFirst(t, 'sequential')
  for (let i = 0; i < 20; i++) await rt.call('sleep:1')
  const parks = rt.stats.parksAtOnce
  const js = rt.stats.jsParksAtOnce
  for (let i = 0; i < 100; i++) await rt.call('sleep:1')
  // Counted from arrivals, every gap would be 1 ms (capped at 4 budgets,
  // 200 us) and all 100 calls would park. From the settle, the gap is the
  // caller's turn-around: microseconds (tens under ASan or a loaded CI,
  // where some cross the budget).
  t.ok(rt.stats.callGapNs < 2 * BUDGET, `the gap estimate is the caller's own (${Math.round(rt.stats.callGapNs / 1000)} us)`)
  t.ok(rt.stats.parksAtOnce - parks < 50, `the poll thread spins again: ${rt.stats.parksAtOnce - parks} of 100 waits parked at once`)
  t.ok(rt.stats.jsParksAtOnce - js < 50, `so does the JS side: ${rt.stats.jsParksAtOnce - js} of 100 calls`)
})
