// Level 2 unload: pending calls are answered, later calls rejected at once,
// unpinned libraries really leave the process (also when the plugin's own
// detached threads served them), pinned ones stay; plugins whose threads
// never exit are reported stuck and never unmapped; tasks a plugin never
// answers are aborted; plugin misuse is counted, never a crash.
import t from 'tap'
import fs from 'fs'
import path from 'path'
import { load, libraries, DlhostError, Runtime } from '../lib/index'
import type { Abi } from '../lib/index'
import { copyOf, examples, fixture, inMaps } from './lib/helpers'

const plugins: Array<{ so: string, abi: Abi, cfg: string }> = [
  { so: 'libecho_host.so', abi: 'host', cfg: 'u' },
  { so: 'libecho_native.so', abi: 'native', cfg: 'threads=4' },
  { so: 'libecho_cxx.so', abi: 'native', cfg: 'threads=3' },
  { so: 'libecho_rust.so', abi: 'native', cfg: 'threads=3' },
  { so: 'libffi_echo.so', abi: 'lua-resty-ffi', cfg: 'u' }
]

/** Settles with the error (or null) without ever rejecting. */
function errorOf (p: Promise<unknown>): Promise<unknown> {
  return p.then(() => null, (e: unknown) => e)
}

/** Resolves when `rt` finished unloading, fails the test after `ms`. */
function within<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done after ${ms} ms`)), ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}

for (const p of plugins) {
  const src = path.join(examples, p.so)
  t.test(`unload with 5000 calls pending: ${p.so}`, { skip: fs.existsSync(src) ? false : `${src} not built` }, async t => {
    const so = copyOf(src, t.testdir())
    const rt = await load(so, p.cfg, { pin: false })
    t.equal(rt.abi, p.abi)
    t.ok(inMaps(so), 'mapped while loaded')
    const n = 5000
    let answered = 0
    const pending = Array.from({ length: n }, (_, i) => rt.call(`pending-${i}`).then(b => { answered++; return b }))
    const u1 = rt.unload()
    t.equal(rt.state, 'unloading')
    const late = errorOf(rt.call('too late'))
    const lateErr = await late
    t.equal(answered, 0, 'the late call was rejected before any pending call settled (at once)')
    t.ok(lateErr instanceof DlhostError)
    t.equal((lateErr as DlhostError).code, 'ERR_RUNTIME_UNLOADED')
    const u2 = rt.unload()
    const rsps = await Promise.all(pending)
    t.equal(rsps.filter((b, i) => b.toString() !== `pending-${i}`).length, 0, 'every call queued before unload answered correctly')
    await within(Promise.all([u1, u2]), 10000, 'unload')
    t.pass('unload() twice: both resolve')
    await rt.unload()
    t.equal(rt.state, 'unloaded')
    t.notOk(inMaps(so), 'unpinned: gone from /proc/self/maps')
    t.match(rt.unloadInfo, { dlclosed: true, mapped: false, threadsStuck: false, aborted: 0, misuse: 0 }, 'unloadInfo')
    t.equal(libraries().filter(r => r.path === so).length, 0, 'no registry row left')
    t.match(rt.stats, { completed: n, failed: 0, inFlight: 0, queued: 0 })
    await t.rejects(rt.call('x'), { code: 'ERR_RUNTIME_UNLOADED' })
  })
}

t.test('pinned (the default): unload keeps the library mapped', async t => {
  const so = copyOf(path.join(examples, 'libecho_native.so'), t.testdir())
  const rt = await load(so, 'pinned')
  t.equal((await rt.call('hi')).toString(), 'hi')
  await rt.unload()
  t.ok(inMaps(so), 'still in /proc/self/maps')
  t.match(rt.unloadInfo, { dlclosed: false, mapped: true, threadsStuck: false })
  const row = libraries().find(r => r.path === so)
  t.match(row, { pinned: true, mapped: true, stuck: null, runtimes: 0 }, 'pinned is policy, not stuck')
  const again = await load(so, 'pinned', { pin: false })
  t.not(again, rt, 'a fresh runtime on the pinned library')
  t.equal((await again.call('again')).toString(), 'again')
  await again.unload()
  t.ok(inMaps(so), 'once pinned, stays pinned')
})

for (const mode of ['sleep-after-null', 'park-after-one']) {
  t.test(`plugin threads that never exit (${mode}): resolved, never unmapped, reported stuck`, async t => {
    const so = copyOf(fixture('stuck.so'), t.testdir())
    const rt = await load(so, mode, { pin: false, unloadTimeoutMs: 300 })
    t.equal((await rt.call('first')).toString(), 'first')
    const later = [rt.call('second'), rt.call('third')]
    const settled = later.map(c => errorOf(c))
    const t0 = Date.now()
    await within(rt.unload(), 10000, 'unload of a stuck runtime')
    const ms = Date.now() - t0
    t.ok(ms >= 250, `unload waited for the threads (${ms} ms)`)
    const errs = await Promise.all(settled)
    if (mode === 'sleep-after-null') {
      t.same(errs, [null, null], 'calls queued before unload were answered')
      t.same((await Promise.all(later)).map(String), ['second', 'third'])
    } else {
      // The thread never polls again: nobody can answer them, so they must
      // not hang either.
      t.same(errs.map(e => (e as DlhostError | null)?.code), ['ERR_ABORTED', 'ERR_ABORTED'], 'calls nobody took are aborted')
    }
    t.ok(inMaps(so), 'never unmapped under a running thread')
    t.match(rt.unloadInfo, { threadsStuck: true, dlclosed: false, mapped: true })
    const row = libraries().find(r => r.path === so)
    t.ok(row, 'the library keeps its registry row')
    t.equal(row?.stuck, 'plugin threads still running')
    t.equal(row?.mapped, true)
    t.equal(rt.state, 'unloaded')
    await t.rejects(rt.call('x'), { code: 'ERR_RUNTIME_UNLOADED' })
  })
}

t.test('a task the plugin never answers is aborted once its threads exit', async t => {
  const so = copyOf(fixture('noanswer.so'), t.testdir())
  const rt = await load(so, 'n', { pin: false })
  let dropSettled = false
  const drop = errorOf(rt.call('drop')).finally(() => { dropSettled = true })
  t.equal((await rt.call('after')).toString(), 'after', 'later calls are served')
  t.equal(dropSettled, false, 'the dropped call is pending')
  t.equal(rt.stats.inFlight, 1)
  await within(rt.unload(), 10000, 'unload')
  t.equal(dropSettled, true, 'settled by the time unload resolved: nothing left pending')
  const err = await drop
  t.ok(err instanceof DlhostError)
  t.equal((err as DlhostError).code, 'ERR_ABORTED')
  t.match(rt.unloadInfo, { aborted: 1, dlclosed: true, mapped: false, threadsStuck: false })
  t.match(rt.stats, { inFlight: 0, failed: 1, completed: 1 })
  t.notOk(inMaps(so), 'threads exited: unmapped')
})

t.test('plugin misuse: answered twice, NULL body with a length', async t => {
  const so = copyOf(fixture('misuse.so'), t.testdir())
  const rt = await load(so, 'm', { pin: false })
  t.equal(rt.abi, 'native')
  t.equal((await rt.call('twice')).toString(), 'first', 'the first answer wins')
  // One poller thread: by the time "sync" is answered, the second answer to
  // "twice" (made before it, on the same thread) has been seen.
  t.equal((await rt.call('sync')).toString(), 'sync')
  t.equal(rt.stats.misuse, 1, 'the second answer is counted')
  t.match(rt.stats, { completed: 2, failed: 0 }, 'and not delivered (rc 9 would be a failure)')
  const many = await Promise.all(Array.from({ length: 500 }, () => rt.call('twice')))
  t.ok(many.every(b => b.toString() === 'first'))
  await rt.call('sync')
  t.equal(rt.stats.misuse, 501)
  const nul = await rt.call('nullrsp')
  t.ok(Buffer.isBuffer(nul))
  t.equal(nul.length, 0, 'rsp NULL with a length: an empty body')
  t.equal((await rt.call('still ok')).toString(), 'still ok', 'the runtime keeps serving')

  const host = await load(so, 'h', { pin: false, entry: 'host' })
  t.equal((await host.call('nullrsp')).length, 0, 'host-driven: *rsp NULL with *rsp_len 5 -> empty')
  t.equal(host.callSync('nullrsp').length, 0, 'same via callSync')
  await Promise.all([rt.unload(), host.unload()])
  t.equal(rt.unloadInfo?.misuse, 501)
  t.notOk(inMaps(so), 'unloads normally afterwards')
})

t.test('several runtimes of one unpinned library: the last unload dlcloses it', async t => {
  const so = copyOf(path.join(examples, 'libecho_native.so'), t.testdir())
  const rts: Runtime[] = []
  for (let i = 0; i < 20; i++) rts.push(await load(so, `cfg-${i}`, { pin: false }))
  t.equal(libraries().find(r => r.path === so)?.runtimes, 20)
  await within(Promise.all(rts.slice(1).map(r => r.unload())), 10000, 'unload')
  t.ok(inMaps(so), 'one runtime left: still mapped')
  t.ok(rts.slice(1).every(r => r.unloadInfo?.dlclosed === false), 'the earlier unloads did not dlclose')
  t.equal((await rts[0].call('alive')).toString(), 'alive')
  await rts[0].unload()
  t.match(rts[0].unloadInfo, { dlclosed: true, mapped: false })
  t.notOk(inMaps(so))
})
