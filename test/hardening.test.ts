// A host that runs for months: memory that comes back, listeners that throw,
// bad input, oversized answers, thread exhaustion, init off the event loop.
import t from 'tap'
import { execFileSync, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { load, open, reloadable, DlhostError, Runtime } from '../lib/index'
import { copyOf, dist, examples, fixture, root, runNode } from './lib/helpers'

const echo = path.join(examples, 'libecho_host.so')

/**
 * Runs `body` in a child, inside an async function with dist as `d`,
 * `install(build)` renaming a build in over `lib` and `out` to fill; listener
 * errors (uncaught exceptions) land in out.thrown. Returns `out`.
 */
function swapScript (t: Tap, builds: string[], lib: string, body: string): Record<string, unknown> {
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    const fs = require('fs')
    const builds = ${JSON.stringify(builds)}
    const lib = ${JSON.stringify(lib)}
    const install = (from) => { fs.copyFileSync(from, lib + '.tmp'); fs.renameSync(lib + '.tmp', lib) }
    const thrown = []
    process.on('uncaughtException', e => thrown.push(e.message))
    ;(async () => {
      const out = {}
      ${body}
      await new Promise(r => setImmediate(r))
      out.thrown = [...new Set(thrown)].sort()
      console.log(JSON.stringify(out))
    })()`)
  t.equal(r.status, 0, r.stderr)
  return JSON.parse(r.stdout) as Record<string, unknown>
}
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

t.test('unloaded runtimes and closed plugins are collected (WeakRef + gc)', async t => {
  const dir = t.testdir()
  const lib = copyOf(echo, dir)
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    ;(async () => {
      // Each cycle in its own function: no frame of this one holds a runtime.
      const cycle = async (i) => {
        const rt = await d.load(${JSON.stringify(lib)}, 'cfg' + i, { pin: false })
        await rt.call('x')
        await rt.unload()
        return new WeakRef(rt)
      }
      const plugin = async () => {
        const p = await d.reloadable(${JSON.stringify(lib)}, null, { watch: false })
        await p.call('x'); await p.reload(); await p.close()
        return new WeakRef(p)
      }
      const refs = []
      for (let i = 0; i < 300; i++) refs.push(await cycle(i))
      const pref = await plugin()
      for (let i = 0; i < 10; i++) { await new Promise(r => setImmediate(r)); gc() }
      console.log(JSON.stringify({ alive: refs.filter(r => r.deref() !== undefined).length, plugin: pref.deref() !== undefined }))
    })()`, { args: ['--expose-gc'] })
  t.equal(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  t.equal(out.alive, 0, 'every unloaded Runtime was collected')
  t.equal(out.plugin, false, 'the closed Plugin was collected')
})

t.test('a throwing listener never leaves a plugin half-swapped', async t => {
  const dir = t.testdir()
  const src = path.join(root, 'examples', 'echo-host', 'echo.c')
  const builds = ['1', '2'].map(v => {
    const out = path.join(dir, `v${v}.so`)
    execFileSync('cc', ['-O1', '-fPIC', '-shared', '-I' + path.join(root, 'csrc', 'include'), `-DPLUGIN_VERSION="${v}"`, '-o', out, src])
    return out
  })
  const lib = path.join(dir, 'libplugin.so')
  fs.copyFileSync(builds[0], lib)
  const out = swapScript(t, builds, lib, `
      let cur = 0
      for (const [strategy, event] of [['drain', 'drained'], ['shadow', 'drained'], ['shadow', 'reload'], ['drain', 'reload']]) {
        install(builds[cur = 0])
        const p = await d.reloadable(lib, null, { watch: false, strategy })
        p.on(event, () => { throw new Error(strategy + ':' + event) })
        const seen = []
        for (let i = 0; i < 3; i++) {
          install(builds[cur ^= 1])
          await p.reload()
          seen.push((await p.call('version')).toString())
        }
        out[strategy + ':' + event] = seen.join('')
        await p.close()
      }
      // a bad build with a throwing 'error' listener: rolled back, old serves
      install(builds[0])
      const p = await d.reloadable(lib, null, { watch: false, strategy: 'drain' })
      p.on('error', () => { throw new Error('error-listener') })
      fs.writeFileSync(lib, 'not elf')
      out.bad = await p.reload().then(() => 'resolved', e => e.code)
      out.afterBad = (await p.call('version')).toString()
      install(builds[1])
      await p.reload()
      out.next = (await p.call('version')).toString()
      await p.close()`)
  for (const k of ['drain:drained', 'shadow:drained', 'shadow:reload', 'drain:reload']) t.equal(out[k], '212', `${k}: every swap happened and served`)
  t.equal(out.bad, 'ERR_NOT_ELF', "reload() rejects with the build's own code, not the listener's error")
  t.equal(out.afterBad, '1', 'the old version serves')
  t.equal(out.next, '2', 'the next good build is taken')
  t.same(out.thrown, ['drain:drained', 'drain:reload', 'error-listener', 'shadow:drained', 'shadow:reload'], 'listener errors surface as uncaught exceptions')
})

t.test('bad input: always coded, and never a consumed slot (maxQueue 2)', async t => {
  const dir = t.testdir()
  const rt = await load(copyOf(echo, dir), 'bad-input', { maxQueue: 2 })
  t.teardown(() => rt.unload())
  const refill = async (what: string): Promise<void> => {
    const [a, b] = await Promise.all([rt.call('one'), rt.call('two')])
    t.equal(a.toString() + b.toString(), 'onetwo', `two calls still fit after ${what}`)
    t.equal(rt.stats.inFlight, 0, `nothing in flight after ${what}`)
  }
  const ab = new ArrayBuffer(16)
  const detached = new Uint8Array(ab)
  structuredClone(ab, { transfer: [ab] })
  for (let i = 0; i < 3; i++) await t.rejects(rt.call(detached), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, 'detached buffer')
  t.throws(() => rt.callSync(detached), { code: 'ERR_INVALID_ARG_TYPE' })
  await refill('detached buffers')
  const proxy = new Proxy(new Uint8Array(8), {})
  for (let i = 0; i < 3; i++) await t.rejects(rt.call(proxy), { code: 'ERR_INVALID_ARG_TYPE' }, 'a Proxy')
  await refill('proxies')
  for (let i = 0; i < 3; i++) await t.rejects(rt.call('x', { signal: {} as AbortSignal }), { code: 'ERR_INVALID_ARG_TYPE' }, 'bad signal')
  await refill('bad signals')
  await t.rejects(rt.call('x', null as unknown as undefined), { code: 'ERR_INVALID_ARG_TYPE' })
  await refill('bad options')

  class Liar extends Uint8Array { override get byteLength (): number { return 0 } }
  const liar = new Liar(1000).fill(0x45)
  const [before, lied] = await Promise.all([rt.call('aaaa'), rt.call(liar)])
  t.equal(before.toString(), 'aaaa', "another call's bytes are its own")
  t.ok(lied.every(x => x === 0x45), 'the liar was sent as it is')
  t.equal(lied.length, 1000, 'the whole (intrinsic) length was sent')
  await refill('a lying subclass')

  const cyclic: Record<string, unknown> = {}
  cyclic.self = cyclic
  await t.rejects(load(echo, cyclic), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, 'a cycle in cfg')
  await t.rejects(load(echo, { n: 1n }), { code: 'ERR_INVALID_ARG_TYPE' }, 'a BigInt in cfg')
  await t.rejects(load(echo, { toJSON () { throw new Error('nope') } }), { code: 'ERR_INVALID_ARG_TYPE' }, 'a throwing toJSON')
  await t.rejects(load(path.join(dir, 'x'.repeat(5000))), { code: 'ERR_NOT_FOUND' }, 'ENAMETOOLONG is coded')
  t.throws(() => open(path.join(dir, 'y'.repeat(5000))), { code: 'ERR_NOT_FOUND' })
  const lib = open(fixture('plain.so'))
  t.throws(() => lib.has('plain_value\0junk'), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, 'a NUL in a symbol name')
  lib.release()
})

t.test('unloadTimeoutMs: Infinity means no limit, NaN is refused', async t => {
  const dir = t.testdir()
  const rt = await load(copyOf(echo, dir), null, { unloadTimeoutMs: Infinity, pin: false })
  t.equal((await rt.call('x')).toString(), 'x')
  await rt.unload()
  t.equal(rt.unloadInfo?.threadsStuck, false, 'not reported stuck at once')
  await t.rejects(load(echo, null, { unloadTimeoutMs: NaN }), { code: 'ERR_INVALID_ARG_TYPE' })
})

t.test('EMFILE from open()/load() is coded', async t => {
  const script = `
    const d = require(${JSON.stringify(dist)})
    const fs = require('fs')
    const fds = []
    try { for (;;) fds.push(fs.openSync('/dev/null', 'r')) } catch (e) { if (e.code !== 'EMFILE') throw e }
    let code
    try { d.open(${JSON.stringify(fixture('plain2.so'))}) } catch (e) { code = e.code }
    console.log(code)`
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const r = spawnSync('bash', ['-c', 'ulimit -n 256 && exec "$0" -e "$1"', process.execPath, script], { encoding: 'utf8', env, timeout: 30000 })
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout.trim(), 'ERR_ACCESS', 'a coded DlhostError, not a raw EMFILE')
})

t.test('an answer longer than a Buffer can be: ERR_RESPONSE_TOO_LARGE, freed once, the runtime serves on', async t => {
  for (const abi of ['host', 'native']) {
    const rt = await load(fixture(`hard_${abi}.so`), 'huge-' + abi)
    await t.rejects(rt.call('huge'), { code: 'ERR_RESPONSE_TOO_LARGE' }, `${abi}: call()`)
    if (abi === 'host') t.throws(() => rt.callSync('huge'), { code: 'ERR_RESPONSE_TOO_LARGE' }, 'callSync()')
    t.equal((await rt.call('after')).toString(), 'after', `${abi}: serves on`)
    await rt.unload()
  }
})

t.test('no thread to be had: load() rejects with ERR_RESOURCE, nothing aborts', async t => {
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    ;(async () => {
      const out = {}
      // the owner thread of a library cannot start
      process.env.DLHOST_TEST_FAIL_THREADS = '1'
      const p1 = d.load(${JSON.stringify(fixture('hard_native.so'))}, 'a')
      delete process.env.DLHOST_TEST_FAIL_THREADS
      out.owner = await p1.then(() => 'loaded', e => e.code)
      // init runs, then neither the poll thread nor the reaper can start
      out.host = await d.load(${JSON.stringify(fixture('hard_host.so'))}, 'fail-threads', { pin: false }).then(() => 'loaded', e => e.code)
      delete process.env.DLHOST_TEST_FAIL_THREADS
      const rt = await d.load(${JSON.stringify(fixture('hard_host.so'))}, 'fine')
      out.after = (await rt.call('ok')).toString()
      console.log(JSON.stringify(out))
    })()`, // After whatever is preloaded already (the ASan runtime must come first).
  { env: { ...process.env, LD_PRELOAD: [process.env.LD_PRELOAD, fixture('failthread.so')].filter(x => x !== undefined && x !== '').join(' ') } })
  t.equal(r.status, 0, r.stderr)
  t.same(JSON.parse(r.stdout), { owner: 'ERR_RESOURCE', host: 'ERR_RESOURCE', after: 'ok' })
})

t.test('plugin init never freezes the event loop (every ABI)', async t => {
  for (const abi of ['host', 'native', 'lua']) {
    let last = performance.now()
    let worst = 0
    const timer = setInterval(() => {
      const now = performance.now()
      worst = Math.max(worst, now - last)
      last = now
    }, 5)
    const rt: Runtime = await load(fixture(`hard_${abi}.so`), 'sleep:400')
    clearInterval(timer)
    t.ok(worst < 300, `${abi}: the loop kept turning while init slept 400 ms (worst gap ${worst.toFixed(0)} ms)`)
    t.equal((await rt.call('x')).toString(), 'x')
    await rt.unload()
  }
})

t.test('dlhost_open returning NULL says so', async t => {
  const e = await load(fixture('hard_host.so'), 'null').catch((err: DlhostError) => err)
  t.match(e, { code: 'ERR_INIT_FAILED', message: /dlhost_open returned NULL/ })
  t.equal((e as DlhostError).rc, undefined, 'no invented rc')
})

t.test('a repeat load() changes nothing; a dying runtime is never returned', async t => {
  const dir = t.testdir()
  const lib = copyOf(echo, dir)
  const a = await load(lib, 'same', { pin: false })
  const b = await load(lib, 'same') // would pin if options applied
  t.equal(a, b, 'the live runtime')
  t.equal(a.library.pinned, false, 'not pinned by the repeat load')
  const unloading = a.unload()
  const c = await load(lib, 'same', { pin: false })
  t.not(c, a, 'a fresh runtime, not the one being unloaded')
  t.equal(a.state, 'unloaded', 'the old one had finished unloading')
  await unloading
  t.equal((await c.call('x')).toString(), 'x')
  await c.unload()
  t.notOk(fs.existsSync('/proc/self/maps') && fs.readFileSync('/proc/self/maps', 'utf8').includes(lib), 'unpinned: gone')
})

t.test('a relative path is resolved once, at the call', async t => {
  const dir = t.testdir()
  copyOf(echo, dir, 'rel.so')
  const cwd = process.cwd()
  process.chdir(dir)
  let p: Awaited<ReturnType<typeof reloadable>> | undefined
  try {
    p = await reloadable('rel.so', null, { watch: false })
  } finally {
    process.chdir(cwd)
  }
  if (p === undefined) throw new Error('no plugin')
  const plugin = p
  t.teardown(() => plugin.close())
  t.equal(plugin.path, path.resolve(dir, 'rel.so'))
  await plugin.reload() // reads dir/rel.so, not ./rel.so of the new cwd
  t.equal((await plugin.call('x')).toString(), 'x')
})

t.test('user code that throws while calls settle never stops a runtime', async t => {
  const dir = t.testdir()
  const lib = copyOf(echo, dir)
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    const thrown = []
    process.on('uncaughtException', e => thrown.push(e.message))
    ;(async () => {
      const rt = await d.load(${JSON.stringify(lib)}, 'throwing')
      for (let i = 0; i < 3; i++) {
        // runs in the settle callback's microtask checkpoint, its tick on the way out
        await rt.call('a').then(() => process.nextTick(() => { throw new Error('tick' + i) }))
      }
      const answers = await Promise.all([rt.call('b'), rt.call('c')])
      console.log(JSON.stringify({ answers: answers.map(String), thrown }))
    })()`)
  t.equal(r.status, 0, r.stderr)
  t.same(JSON.parse(r.stdout), { answers: ['b', 'c'], thrown: ['tick0', 'tick1', 'tick2'] })
})

t.test('a file renamed over the path while it is opened: the version reported is the code mapped', async t => {
  const dir = t.testdir()
  const src = path.join(root, 'examples', 'echo-host', 'echo.c')
  // Different sizes: two files of one size on a reused inode within the
  // filesystem's timestamp granularity have the same identity (dev, inode,
  // size, mtime), for glibc as for dlhost; that limit is documented.
  const builds = ['1', '2'].map(v => {
    const out = path.join(dir, `v${v}.so`)
    execFileSync('cc', ['-O1', '-fPIC', '-shared', '-I' + path.join(root, 'csrc', 'include'), `-DPLUGIN_VERSION="${v}"`, '-o', out, src])
    if (v === '2') fs.appendFileSync(out, Buffer.alloc(4096))
    return out
  })
  const sha = builds.map(b => require('crypto').createHash('sha256').update(fs.readFileSync(b)).digest('hex') as string)
  const target = path.join(dir, 'libplugin.so')
  fs.copyFileSync(builds[0], target)
  // Another process swaps the two builds over the path as fast as it can.
  const a = path.join(dir, 'a.so')
  const b = path.join(dir, 'b.so')
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const renamer = spawn(process.execPath, ['-e', `
    const fs = require('fs')
    const [a, b, t, v1, v2] = ${JSON.stringify([a, b, target, ...builds])}
    for (;;) { fs.copyFileSync(v1, a); fs.renameSync(a, t); fs.copyFileSync(v2, b); fs.renameSync(b, t) }`], { env, stdio: 'ignore' })
  const stopped = new Promise(resolve => renamer.once('exit', resolve))
  t.teardown(async () => { renamer.kill('SIGKILL'); await stopped })
  let mismatches = 0
  let stale = 0
  for (let i = 0; i < 300; i++) {
    let rt
    try {
      rt = await load(target, `race ${i}`, { pin: false })
    } catch (err) {
      // A replaced file glibc still has mapped, or one that never held still.
      if ((err as DlhostError).code === 'ERR_STALE_PATH' || (err as DlhostError).code === 'ERR_NOT_ELF' || (err as DlhostError).code === 'ERR_NOT_FOUND') { stale++; continue }
      throw err
    }
    const served = (await rt.call('version')).toString()
    const reported = rt.stats.version.sha256
    if (reported !== sha[Number(served) - 1]) mismatches++
    await rt.unload()
  }
  renamer.kill('SIGKILL')
  await stopped
  t.equal(mismatches, 0, `the reported version is the one that answers (${300 - stale} loads, ${stale} refused while changing)`)
})

t.test('throwing promote and rollback listeners: the canary still ends the way it was decided', async t => {
  const dir = t.testdir()
  const lib = path.join(dir, 'p.so')
  const builds = ['v1', 'v2', 'v3'].map(v => fixture(`rollout_${v}.so`))
  fs.copyFileSync(builds[0] as string, lib)
  const out = swapScript(t, builds, lib, `
      const p = await d.reloadable(lib, null, { watch: false, rollout: { canary: 0.5, minCalls: 1e9 } })
      p.on('promote', () => { throw new Error('promote-listener') })
      p.on('rollback', () => { throw new Error('rollback-listener') })
      // A canary of build b, ended by hand with end ('rollback' or 'promote').
      const decide = async (b, end) => {
        install(builds[b])
        const reload = p.reload()
        while (p.canary === null) await new Promise(r => setImmediate(r))
        await p[end]()
        out[end] = await reload.then(() => 'resolved', e => e.code)
        out[end + 'Serving'] = (await p.call('x')).toString()
        out[end + 'Canary'] = p.canary
      }
      await decide(1, 'rollback')
      await decide(2, 'promote')
      await p.close()`)
  t.equal(out.rollback, 'ERR_ROLLED_BACK', 'rolled back, though its listener threw')
  t.equal(out.rollbackServing, 'v1:x', 'the stable version serves')
  t.equal(out.promote, 'resolved', 'promoted, though its listener threw')
  t.equal(out.promoteServing, 'v3:x', 'the promoted version serves')
  t.same([out.rollbackCanary, out.promoteCanary], [null, null], 'no canary left behind')
  t.same(out.thrown, ['promote-listener', 'rollback-listener'], 'listener errors surface as uncaught exceptions')
})

t.test('an unloaded runtime with message listeners, an open iterator and a settled batch is collected (WeakRef + gc)', async t => {
  const lib = copyOf(echo, t.testdir())
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    ;(async () => {
      const cycle = async (i) => {
        const rt = await d.load(${JSON.stringify(lib)}, 'gc' + i, { pin: false })
        rt.on('message', () => {})
        const it = rt.messages()
        const next = it.next() // waiting when the runtime ends
        rt.messages() // never read at all
        await rt.callBatch(['a', 'b', 'c'])
        const late = rt.callBatch(['d', 'e']) // in flight at unload
        await rt.unload()
        await late
        if (!(await next).done) throw new Error('the iterator did not end')
        return new WeakRef(rt)
      }
      const refs = []
      for (let i = 0; i < 100; i++) refs.push(await cycle(i))
      for (let i = 0; i < 10; i++) { await new Promise(r => setImmediate(r)); gc() }
      console.log(JSON.stringify({ alive: refs.filter(r => r.deref() !== undefined).length }))
    })()`, { args: ['--expose-gc'] })
  t.equal(r.status, 0, r.stderr)
  t.equal(JSON.parse(r.stdout).alive, 0, 'every one was collected')
})
