// Level 2 and the lives of threads and processes: worker_threads that are
// terminated with calls in flight or finish with runtimes loaded, and
// processes that end with runtimes loaded or calls in flight.
import t from 'tap'
import path from 'path'
import { Worker } from 'worker_threads'
import { load, libraries } from '../lib/index'
import { copyOf, dist, examples, fixture, inMaps, runNode } from './lib/helpers'

/** Rejects when `p` has not settled after `ms`: a hang becomes a failure. */
function within<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done after ${ms} ms`)), ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}

/**
 * Waits until `cond()` holds, checking every `step` ms, for at most `ms`.
 * Only for what happens on native threads with no event a JS thread can
 * await (a terminated worker's runtime draining in the background).
 */
async function eventually (cond: () => boolean, ms: number, step = 10): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) return false
    await new Promise(resolve => setTimeout(resolve, step))
  }
  return true
}

function exitOf (w: Worker): Promise<number> {
  return new Promise((resolve, reject) => { w.once('exit', resolve); w.once('error', reject) })
}

// A worker that keeps `depth` calls in flight on each runtime for ever and
// reports once it has seen `after` answers. Checks every answer.
const streamer = `
  const { parentPort, workerData } = require('worker_threads')
  const d = require(workerData.dist)
  ;(async () => {
    const rts = []
    for (const so of workerData.libs) rts.push(await d.load(so, workerData.cfg))
    let answered = 0, wrong = 0, reported = false
    const pump = (rt, k) => {
      const req = 'w' + k
      rt.call(req).then(b => {
        if (b.toString() !== req) wrong++
        if (++answered >= workerData.after && !reported) {
          reported = true
          parentPort.postMessage({ answered, wrong, inFlight: rts.map(r => r.stats.inFlight) })
        }
        pump(rt, k + 1)
      }, e => parentPort.postMessage({ error: String(e) }))
    }
    for (const rt of rts) for (let i = 0; i < workerData.depth; i++) pump(rt, i * 1e6)
  })().catch(e => parentPort.postMessage({ error: String(e) }))
`

t.test('a worker terminated with calls in flight: the main thread is fine', async t => {
  const dir = t.testdir()
  // Pinned (the default) copies; the main thread loads the same identities.
  const libs = ['libecho_host.so', 'libecho_native.so', 'libecho_cxx.so', 'libffi_echo.so'].map(n => copyOf(path.join(examples, n), dir))
  const mine = await Promise.all(libs.map(so => load(so, 'shared-cfg')))
  // Keep the main runtimes busy across the termination too.
  const busy = mine.map(rt => Promise.all(Array.from({ length: 2000 }, (_, i) => rt.call(`m${i}`))))
  for (let round = 0; round < 3; round++) {
    const w = new Worker(streamer, { eval: true, workerData: { dist, libs, cfg: 'shared-cfg', depth: 200, after: 5000 } })
    const msg = await within(new Promise<{ answered?: number, wrong?: number, inFlight?: number[], error?: string }>((resolve, reject) => {
      w.once('message', resolve)
      w.once('error', reject)
    }), 20000, 'worker answers')
    t.equal(msg.error, undefined, 'no error in the worker')
    t.equal(msg.wrong, 0, `round ${round}: every answer in the worker matched its request`)
    t.ok(msg.inFlight?.every(n => n > 0), 'calls were in flight when it was terminated')
    await within(w.terminate(), 10000, 'terminate')
  }
  const answers = await within(Promise.all(busy), 20000, 'main thread calls')
  t.ok(answers.every(list => list.every((b, i) => b.toString() === `m${i}`)), 'main thread calls in flight during termination answered')
  // The same libraries and cfg are still usable from the main thread.
  for (const [i, rt] of mine.entries()) {
    t.equal(await load(libs[i], 'shared-cfg'), rt, 'the main thread keeps its own runtime')
    const rsps = await Promise.all(Array.from({ length: 1000 }, (_, k) => rt.call(`after-${k}`)))
    t.ok(rsps.every((b, k) => b.toString() === `after-${k}`), `${path.basename(libs[i])}: still serving`)
  }
  const rows = (): Array<{ runtimes: number }> => libraries().filter(r => libs.includes(r.path))
  t.equal(rows().length, libs.length)
  // The workers' runtimes finish their queues on native threads, then let go.
  t.ok(await eventually(() => rows().every(r => r.runtimes === 1), 10000), 'the terminated workers\' runtimes were torn down (one left per library: ours)')
  await Promise.all(mine.map(rt => rt.unload()))
})

t.test('a worker terminated with calls in flight on an unpinned library: unmapped after the main thread lets go', async t => {
  const dir = t.testdir()
  const so = copyOf(path.join(examples, 'libecho_native.so'), dir)
  const w = new Worker(`
    const { parentPort, workerData } = require('worker_threads')
    const d = require(workerData.dist)
    d.load(workerData.so, 'threads=2', { pin: false }).then(rt => {
      for (let i = 0; i < 500; i++) rt.call('sleep:1')
      parentPort.postMessage(rt.stats.inFlight)
    })
  `, { eval: true, workerData: { dist, so } })
  const inFlight = await within(new Promise(resolve => w.once('message', resolve)), 10000, 'worker')
  t.ok((inFlight as number) > 0, 'calls in flight')
  await w.terminate()
  // The worker's runtime is torn down in the background (its pool drains
  // ~500 ms of sleeps). A load in the main thread now gets its own runtime.
  const rt = await load(so, 'threads=2', { pin: false })
  t.equal((await rt.call('main')).toString(), 'main')
  await rt.unload()
  // The worker's runtime holds the library until its plugin threads have
  // left, which happens in the background after terminate().
  t.ok(await eventually(() => !inMaps(so), 10000), 'no thread, runtime or reference left: unmapped')
})

t.test('a worker that leaves runtimes loaded and finishes exits by itself', async t => {
  const dir = t.testdir()
  const libs = ['libecho_host.so', 'libecho_native.so', 'libecho_cxx.so', 'libecho_rust.so', 'libffi_echo.so'].map(n => copyOf(path.join(examples, n), dir))
  const w = new Worker(`
    const { parentPort, workerData } = require('worker_threads')
    const d = require(workerData.dist)
    ;(async () => {
      for (const so of workerData.libs) {
        const rt = await d.load(so, 'left-loaded')
        parentPort.postMessage((await rt.call('hello')).toString())
      }
    })()
  `, { eval: true, workerData: { dist, libs } })
  const said: string[] = []
  w.on('message', m => said.push(String(m)))
  const code = await within(exitOf(w), 10000, 'worker exit')
  t.equal(code, 0, 'exited normally, without terminate()')
  t.same(said, libs.map(() => 'hello'))
  for (const so of libs) {
    const rt = await load(so, 'left-loaded')
    t.equal((await rt.call('main')).toString(), 'main', 'the main thread can load it afterwards')
    await rt.unload()
  }
})

t.test('a script that leaves runtimes loaded exits by itself', async t => {
  const dir = t.testdir()
  const libs = ['libecho_host.so', 'libecho_native.so', 'libecho_cxx.so', 'libecho_rust.so', 'libffi_echo.so'].map(n => copyOf(path.join(examples, n), dir))
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    ;(async () => {
      for (const so of ${JSON.stringify(libs)}) {
        const a = await d.load(so, 'left')
        const b = await d.load(so, 'unpinned', { pin: false })
        console.log((await a.call('ok')).toString(), (await b.call('ok')).toString())
      }
    })()
  `, { timeout: 20000 })
  t.equal(r.signal, null, 'not killed by the timeout')
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout.trim().split('\n').length, libs.length)
  t.ok(r.stdout.trim().split('\n').every(l => l === 'ok ok'))
  t.ok(r.ms < 5000, `exited in ${r.ms} ms`)
})

t.test('a script with calls in flight waits for them, then exits', async t => {
  const dir = t.testdir()
  const host = copyOf(path.join(examples, 'libecho_host.so'), dir)
  const native = copyOf(path.join(examples, 'libecho_native.so'), dir)
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    ;(async () => {
      const h = await d.load(${JSON.stringify(host)}, 'x')
      const n = await d.load(${JSON.stringify(native)}, 'x')
      h.call('sleep:300').then(b => console.log('host', b.toString()))
      n.call('sleep:300').then(b => console.log('native', b.toString()))
      n.call('fail:3').catch(e => console.log('failed', e.code, e.rc))
      // the script ends here with three calls in flight
    })()
  `, { timeout: 20000 })
  t.equal(r.signal, null, 'not killed by the timeout')
  t.equal(r.status, 0, r.stderr)
  t.same(r.stdout.trim().split('\n').sort(), ['failed ERR_PLUGIN 3', 'host sleep:300', 'native sleep:300'], 'every call answered before exit')
  t.ok(r.ms < 5000, `exited in ${r.ms} ms`)
})

t.test('process.exit() with calls in flight and plugin threads running: no hang, no crash', async t => {
  const dir = t.testdir()
  const native = copyOf(path.join(examples, 'libecho_native.so'), dir)
  const stuck = copyOf(fixture('stuck.so'), dir)
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    ;(async () => {
      const n = await d.load(${JSON.stringify(native)}, 'threads=8')
      const s = await d.load(${JSON.stringify(stuck)}, 'sleep-after-null', { unloadTimeoutMs: 100 })
      for (let i = 0; i < 10000; i++) n.call('x' + i)
      await s.unload()
      console.log('bye')
      process.exit(7)
    })()
  `, { timeout: 20000 })
  t.equal(r.signal, null, r.stderr)
  t.equal(r.status, 7, r.stderr)
  t.equal(r.stdout.trim(), 'bye')
})
