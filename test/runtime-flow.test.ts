// Level 2 flow control: maxQueue (ERR_QUEUE_FULL at once, never a hang),
// AbortSignal, and stats. The gate fixture (test/fixtures/plugins/gate.c)
// lets the test hold a plugin thread and release it: no timing involved.
import t, { Test } from 'tap'
import path from 'path'
import { load, DlhostError, Runtime } from '../lib/index'
import { copyOf, examples, fixture } from './lib/helpers'

const codeOf = (e: unknown): string | undefined => (e as DlhostError | null)?.code

/** Fails (rejects) when `p` has not settled after `ms`: a hang becomes a failure. */
function within<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not settled after ${ms} ms`)), ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}

/** A gated runtime plus a control runtime of the same library (shared gate). */
async function gated (t: Test, maxQueue?: number): Promise<{ rt: Runtime, ctl: Runtime }> {
  const so = copyOf(fixture('gate.so'), t.testdir())
  const rt = await load(so, 'gated', { pin: false, maxQueue })
  const ctl = await load(so, 'control', { pin: false })
  t.teardown(async () => {
    await ctl.call('open') // never leave a thread blocked, even on failure
    await Promise.all([rt.unload(), ctl.unload()])
  })
  return { rt, ctl }
}

t.test('maxQueue on a slow host-driven plugin: the excess rejects at once, the rest resolve', async t => {
  const so = copyOf(path.join(examples, 'libecho_host.so'), t.testdir())
  const rt = await load(so, 'mq', { pin: false, maxQueue: 64 })
  const order: string[] = []
  const calls = Array.from({ length: 200 }, (_, i) => {
    const req = i === 0 ? 'sleep:50' : `burst-${i}`
    return rt.call(req).then(
      b => { order.push('ok'); return b.toString() === req },
      (e: unknown) => { order.push(codeOf(e) ?? 'other'); return false })
  })
  t.equal(rt.stats.inFlight, 64, 'exactly maxQueue calls accepted')
  const ok = await Promise.all(calls)
  const full = order.filter(x => x === 'ERR_QUEUE_FULL').length
  t.equal(full, 136, '136 rejected with ERR_QUEUE_FULL')
  t.equal(order.filter(x => x === 'ok').length, 64, '64 resolved')
  t.same(order.slice(0, 136), Array(136).fill('ERR_QUEUE_FULL'), 'all rejections came before any answer (not queued behind the slow call)')
  t.ok(ok.slice(0, 64).every(Boolean), 'the accepted ones are the first 64, each with its own answer')
  t.equal(rt.stats.inFlight, 0)
  // Slots are recycled: a full queue's worth is accepted again.
  const again = await Promise.all(Array.from({ length: 64 }, (_, i) => rt.call(`again-${i}`)))
  t.ok(again.every((b, i) => b.toString() === `again-${i}`), 'capacity comes back')
  t.match(rt.stats, { completed: 128, failed: 0, inFlight: 0, queued: 0 }, 'ERR_QUEUE_FULL is not a plugin failure: failed counts answered calls only')
  await rt.unload()
})

t.test('maxQueue on a plugin-driven runtime held at a gate', async t => {
  const { rt, ctl } = await gated(t, 64)
  const hold = rt.call('hold')
  await ctl.call('await-held') // the plugin thread is now blocked inside "hold"
  let answered = 0
  const calls = Array.from({ length: 200 }, (_, i) => rt.call(`x${i}`))
  calls.forEach(c => c.then(() => { answered++ }, () => {}))
  t.equal(rt.stats.inFlight, 64, '63 more fit beside the held call')
  t.equal(rt.stats.queued, 63)
  // The other 137 settle while the gate is still closed: nothing waits for the plugin.
  const errs = await within(Promise.all(calls.slice(63).map(c => c.then(() => null, (e: unknown) => e))), 5000, 'the excess')
  t.same(errs.map(codeOf), Array(137).fill('ERR_QUEUE_FULL'), '137 rejected with ERR_QUEUE_FULL')
  t.equal(answered, 0, 'while the accepted ones still wait behind the gate')
  await t.rejects(rt.call('one more'), { code: 'ERR_QUEUE_FULL' })
  await ctl.call('open')
  t.equal((await hold).toString(), 'held')
  const rest = await within(Promise.all(calls.slice(0, 63)), 5000, 'the accepted calls')
  t.same(rest.map(String), Array.from({ length: 63 }, (_, i) => `x${i}`), 'the accepted ones resolve, each with its own answer')
  t.equal((await rt.call('after')).toString(), 'after', 'nothing hangs')
})

t.test('AbortSignal', async t => {
  const { rt, ctl } = await gated(t)
  const pre = AbortSignal.abort(new Error('changed my mind'))
  const err = await rt.call('never sent', { signal: pre }).then(() => null, (e: unknown) => e)
  t.equal(codeOf(err), 'ERR_ABORTED', 'an already aborted signal')
  t.equal((err as Error).cause, pre.reason, 'the signal reason is the cause')
  t.equal(rt.stats.inFlight, 0, 'nothing was submitted')

  const hold = rt.call('hold')
  await ctl.call('await-held')
  const ac = new AbortController()
  const queued = rt.call('queued-then-aborted', { signal: ac.signal })
  const other = rt.call('not-aborted', { signal: new AbortController().signal })
  t.equal(rt.stats.queued, 2)
  ac.abort()
  await t.rejects(queued, { code: 'ERR_ABORTED' }, 'aborted while queued: rejects while the plugin is still blocked')
  await ctl.call('open')
  t.equal((await hold).toString(), 'held')
  t.equal((await other).toString(), 'not-aborted', 'other calls are unaffected')
  // One poller, FIFO: once "sync" is answered, the aborted call's answer came (and was dropped).
  t.equal((await rt.call('sync')).toString(), 'sync')
  t.equal(rt.stats.inFlight, 0, 'the dropped answer freed its slot')
  ac.abort() // aborting again after settling is harmless
  const late = new AbortController()
  const done = await rt.call('done', { signal: late.signal })
  late.abort()
  t.equal(done.toString(), 'done', 'aborting after the answer changes nothing')
})

t.test('stats: queued, inFlight, completed, failed', async t => {
  const { rt, ctl } = await gated(t)
  t.match(rt.stats, { queued: 0, inFlight: 0, completed: 0, failed: 0, misuse: 0 })
  t.match(rt.stats.version, { seq: 1 })
  t.match(rt.stats.version.sha256, /^[0-9a-f]{64}$/)
  const hold = rt.call('hold')
  await ctl.call('await-held')
  const rest = Array.from({ length: 10 }, (_, i) => rt.call(`s${i}`))
  t.match(rt.stats, { queued: 10, inFlight: 11, completed: 0, failed: 0 }, 'while held: 10 queued behind 1 running')
  await ctl.call('open')
  await hold
  await Promise.all(rest)
  t.match(rt.stats, { queued: 0, inFlight: 0, completed: 11, failed: 0 })

  const so = copyOf(path.join(examples, 'libecho_host.so'), t.testdir())
  const host = await load(so, 'stats', { pin: false })
  const all = await Promise.allSettled([...Array.from({ length: 7 }, (_, i) => host.call(`ok${i}`)),
    host.call('fail:1'), host.call('fail:2'), host.call('fail:3')])
  t.equal(all.filter(r => r.status === 'rejected').length, 3)
  t.match(host.stats, { completed: 7, failed: 3, inFlight: 0, queued: 0 })
  host.callSync('sync calls bypass the queue')
  t.match(host.stats, { inFlight: 0, queued: 0 })
  await host.unload()
  t.match(host.stats, { completed: 7, failed: 3, inFlight: 0 }, 'stats stay readable after unload')
})

t.test('staged calls: each request is copied as call() returns, in call order, at every size', async t => {
  const so = copyOf(path.join(examples, 'libecho_host.so'), t.testdir())
  const rt = await load(so, 'staging', { pin: false })
  t.teardown(() => rt.unload())
  // One buffer reused for every call of a turn (600 calls: more than one
  // batch and more than one chunk of slots), sizes around the inline limit.
  const buf = Buffer.alloc(300)
  const sizes = [1, 2, 63, 126, 127, 128, 129, 300]
  const expected: Buffer[] = []
  const order: number[] = []
  const calls: Array<Promise<Buffer>> = []
  for (let i = 0; i < 600; i++) {
    buf.fill(i & 255)
    buf[0] = 0x30 + (i % 10) // never a command word of the echo plugin
    const req = buf.subarray(0, sizes[i % sizes.length])
    expected.push(Buffer.from(req))
    calls.push(rt.call(req).then(b => { order.push(i); return b }))
  }
  buf.fill(0xee) // after the calls returned: must change nothing
  const got = await Promise.all(calls)
  t.equal(got.filter((b, i) => !b.equals(expected[i])).length, 0, 'every answer echoes its request as it was at call time')
  t.same(order, expected.map((_, i) => i), 'one poll thread: answered in call order')
  t.ok(got.every(b => Buffer.isBuffer(b) && b instanceof Buffer), 'answers are real Buffers')

  const strings = ['', 'a', 'é'.repeat(42), '€'.repeat(42), '€'.repeat(43), '😀'.repeat(21), '😀'.repeat(22),
    'x'.repeat(127), 'x'.repeat(128), 'y'.repeat(5000), 'nul\0inside', '\ud800 lone surrogate']
  const answers = await Promise.all(strings.map(s => rt.call(s)))
  t.same(answers.map(b => b.toString()), strings.map(s => Buffer.from(s).toString()), 'strings are sent as UTF-8 at every length')
  t.match(rt.stats, { queued: 0, inFlight: 0, failed: 0 })
})
