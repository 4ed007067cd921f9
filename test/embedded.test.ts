// Libraries that embed a language runtime: CPython (a lua-resty-ffi style
// loader: Py_Initialize and threading in init, Py_Finalize in a destructor)
// and Go (threads that never exit). Their init and final dlclose run on the
// library's owner thread, so finalizing never waits for a dead thread.
import t from 'tap'
import fs from 'fs'
import path from 'path'
import { load, libraries, reloadable, type ReloadEvent } from '../lib/index'
import { copyOf, dist, examples, fixture, inMaps, runNode } from './lib/helpers'

const py = fixture('pyloader.so')
const havePy = fs.existsSync(py)

t.test('CPython: the process exits by itself after a pinned load', { skip: !havePy && 'no python3-dev' }, async t => {
  const dir = t.testdir()
  const lib = copyOf(py, dir)
  for (const [how, tail] of [['unloaded, natural exit', 'await rt.unload()'], ['loaded, natural exit', ''], ['loaded, process.exit()', 'process.exit(0)']]) {
    const r = runNode(`
      const d = require(${JSON.stringify(dist)})
      ;(async () => {
        const rt = await d.load(${JSON.stringify(lib)}, ${JSON.stringify(how)}, { global: true })
        console.log((await rt.call('pid')).toString() === String(process.pid))
        ${tail}
      })()`, { timeout: 20000 })
    t.equal(r.signal, null, `${how}: exited by itself (no hang)`)
    t.equal(r.status, 0, r.stderr)
    t.equal(r.stdout.trim(), 'true', `${how}: Python ran in this process`)
  }
})

t.test('CPython: 20 unpinned cycles, another runtime in between: each dlclosed, serving again', { skip: !havePy && 'no python3-dev' }, async t => {
  const dir = t.testdir()
  const lib = copyOf(py, dir)
  const other = await load(path.join(examples, 'libecho_host.so'), 'between')
  t.teardown(() => other.unload())
  for (let i = 0; i < 20; i++) {
    const rt = await load(lib, `cycle ${i}`, { global: true, pin: false })
    t.equal((await rt.call(`x${i}`)).toString(), `x${i}`)
    await rt.unload()
    t.equal(rt.unloadInfo?.dlclosed, true, `cycle ${i}: dlclosed`)
    t.notOk(inMaps(lib), `cycle ${i}: unmapped`)
    t.notOk(libraries().some(r => r.path === lib), `cycle ${i}: no row left`)
    const n = await load(path.join(examples, 'libecho_native.so'), `between ${i}`, { pin: false })
    t.equal((await n.call('y')).toString(), 'y')
    await n.unload()
  }
})

t.test('CPython under reloadable(), in process: auto drains (one interpreter per process), no abort, no failed call', { skip: !havePy && 'no python3-dev' }, async t => {
  const dir = t.testdir()
  const lib = path.join(dir, 'libpy.so')
  const good = fs.readFileSync(py)
  const install = (i: number): void => {
    const b = Buffer.from(good)
    b[b.length - 1] ^= i // another build (a byte of the section headers' tail)
    fs.writeFileSync(lib + '.tmp', b)
    fs.renameSync(lib + '.tmp', lib)
  }
  install(0)
  await t.rejects(reloadable(lib, null, { watch: false, global: true, strategy: 'shadow', isolate: false }), { code: 'ERR_CANNOT_COEXIST' }, 'side by side is refused, not an abort')
  // isolate: false: in this process ('auto' would isolate it, see below).
  const plugin = await reloadable(lib, null, { watch: false, global: true, isolate: false })
  t.teardown(() => plugin.close())
  const events: ReloadEvent[] = []
  plugin.on('reload', ev => events.push(ev))
  let stop = false
  let done = 0
  const failures: unknown[] = []
  const worker = async (): Promise<void> => {
    while (!stop) {
      try {
        const r = await plugin.call('z')
        if (r.toString() === 'z') done++
        else failures.push(r.toString())
      } catch (err) { failures.push(err) }
    }
  }
  const workers = Array.from({ length: 16 }, worker)
  for (let i = 1; i <= 5; i++) {
    install(i)
    await plugin.reload()
  }
  stop = true
  await Promise.all(workers)
  t.equal(events.length, 5, 'five reloads')
  t.ok(events.every(e => e.strategy === 'drain'), "'auto' chose drain")
  t.same(failures, [], 'no failed call')
  t.ok(done > 0, `${done} calls answered`)
})

const go = fixture('godriven.so')
t.test('Go, plugin-driven: unload is reported stuck (Go runtime) at once, not after unloadTimeoutMs', { skip: !fs.existsSync(go) && 'no Go toolchain' }, async t => {
  const dir = t.testdir()
  const lib = copyOf(go, dir)
  const rt = await load(lib, null, { pin: false, unloadTimeoutMs: 60000 })
  t.equal((await rt.call('x')).toString(), 'go:x')
  const t0 = Date.now()
  await rt.unload()
  t.ok(Date.now() - t0 < 10000, `no wait for threads that never exit (${Date.now() - t0} ms; the bound was 60 s)`)
  t.equal(rt.unloadInfo?.threadsStuck, true)
  t.equal(rt.library.stuck, 'Go runtime')
})

t.test("CPython under reloadable() with 'auto': isolated, versions side by side in their own processes", { skip: !havePy && 'no python3-dev' }, async t => {
  const dir = t.testdir()
  const lib = path.join(dir, 'libpy.so')
  const good = fs.readFileSync(py)
  const install = (i: number): void => {
    const b = Buffer.from(good)
    b[b.length - 1] ^= i
    fs.writeFileSync(lib + '.tmp', b)
    fs.renameSync(lib + '.tmp', lib)
  }
  install(0)
  const plugin = await reloadable(lib, null, { watch: false, global: true })
  t.teardown(() => plugin.close())
  const pid = Number((await plugin.call('pid')).toString())
  t.not(pid, process.pid, 'Python runs in a child')
  const events: ReloadEvent[] = []
  plugin.on('reload', ev => events.push(ev))
  const inflight = Array.from({ length: 32 }, (_, i) => plugin.call(`c${i}`))
  install(1)
  await plugin.reload()
  t.same((await Promise.all(inflight)).map(String), Array.from({ length: 32 }, (_, i) => `c${i}`), 'no call lost across the swap')
  t.equal(events[0]?.strategy, 'shadow', 'side by side, across processes')
  t.not(Number((await plugin.call('pid')).toString()), pid, 'the new version in a new child')
})
