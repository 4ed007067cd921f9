// Level 4: isolated runtimes. The library lives in a child process; what it
// does (crash, hang, run out of memory) never takes the host down.
import t from 'tap'
import { execFileSync, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { Worker } from 'worker_threads'
import { load, DlhostError } from '../lib/index'
import type { IsolatedRuntime } from '../lib/isolate/runtime'
import { dist, examples, fixture } from './lib/helpers'

const iso = async (lib: string, cfg: string | null = null, extra: Record<string, unknown> = {}): Promise<IsolatedRuntime> =>
  await load(lib, cfg, { isolate: 'process', ...extra }) as unknown as IsolatedRuntime
const alive = (pid: number | undefined): boolean => pid !== undefined && fs.existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))

t.test('all three ABIs serve from a child: ordered answers, big bodies, graceful unload', async t => {
  for (const lib of ['libecho_host.so', 'libecho_native.so', 'libffi_echo.so']) {
    const rt = await iso(path.join(examples, lib))
    t.not(rt.pid, process.pid)
    t.ok(alive(rt.pid), `${lib}: a child process`)
    const many = await Promise.all(Array.from({ length: 500 }, (_, i) => rt.call(`m${i}`)))
    t.ok(many.every((b, i) => b.toString() === `m${i}`), `${lib}: 500 answers, each its own`)
    const big = Buffer.alloc(9 * 1024 * 1024, 0x5a)
    t.ok((await rt.call(big)).equals(big), `${lib}: 9 MiB each way`)
    const pid = rt.pid
    await rt.unload()
    t.equal(rt.state, 'unloaded')
    t.notOk(alive(pid), `${lib}: the child is gone after unload`)
    await t.rejects(rt.call('x'), { code: 'ERR_RUNTIME_UNLOADED' })
  }
})

t.test('a crash rejects that call with ERR_PLUGIN_CRASHED; the runtime restarts and serves; the host lives', async t => {
  for (const abi of ['host', 'native']) {
    const rt = await iso(fixture(`hard_${abi}.so`), `crash ${abi}`)
    for (const [req, signal] of [['segv', 'SIGSEGV'], ['abort', 'SIGABRT'], ['exit', null]] as const) {
      const before = rt.pid
      const e = await rt.call(req).catch((err: DlhostError) => err) as DlhostError & { signal?: string, exitCode?: number }
      t.equal(e.code, 'ERR_PLUGIN_CRASHED', `${abi} ${req}: coded`)
      if (signal !== null) t.equal(e.signal, signal)
      else t.equal(e.exitCode, 3)
      t.equal((await rt.call('after')).toString(), 'after', `${abi} ${req}: serves again (a new child)`)
      t.not(rt.pid, before)
    }
    t.equal(rt.stats.restarts, 3)
    await rt.unload()
  }
})

t.test('calls made while the child restarts wait, in order', async t => {
  const rt = await iso(fixture('hard_native.so'), 'ordered')
  t.teardown(() => rt.unload())
  const crash = rt.call('segv').catch((e: DlhostError) => e.code)
  const waiting = Array.from({ length: 50 }, (_, i) => rt.call(`w${i}`))
  t.equal(await crash, 'ERR_PLUGIN_CRASHED')
  const answers = await Promise.allSettled(waiting)
  // Those sent to the dying child are rejected with it; the rest wait for the next one.
  const ok = answers.filter(a => a.status === 'fulfilled').map(a => (a as PromiseFulfilledResult<Buffer>).value.toString())
  const failed = answers.filter(a => a.status === 'rejected').map(a => ((a as PromiseRejectedResult).reason as DlhostError).code)
  t.ok(failed.every(c => c === 'ERR_PLUGIN_CRASHED'), 'never lost silently: rejected with the crash, or answered')
  t.same(ok, [...ok].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1))), 'answered in order')
  t.equal(ok.length + failed.length, 50)
})

t.test('a plugin that crashes at every init reaches ERR_CRASH_LOOP', async t => {
  await t.rejects(iso(fixture('hard_host.so'), 'crash-init'), { code: 'ERR_PLUGIN_CRASHED' }, 'the first start fails load()')
  const rt = await iso(fixture('hard_native.so'), 'loop', {})
  t.teardown(() => rt.unload())
  const errors: DlhostError[] = []
  rt.on('error', (e: DlhostError) => errors.push(e))
  let last: string | undefined
  for (let i = 0; i < 10 && last !== 'ERR_CRASH_LOOP'; i++) last = await rt.call('segv').then(() => 'ok', (e: DlhostError) => e.code)
  t.equal(last, 'ERR_CRASH_LOOP', 'after 5 crashes in the window')
  await t.rejects(rt.call('x'), { code: 'ERR_CRASH_LOOP' })
  t.equal(errors[0]?.code, 'ERR_CRASH_LOOP', "an 'error' event")
  await rt.restart()
  t.equal((await rt.call('back')).toString(), 'back', 'restart() clears the loop')
})

t.test('a call past its timeout: ERR_TIMEOUT, the wedged child is recycled', async t => {
  const rt = await iso(fixture('hard_native.so'), 'hang')
  t.teardown(() => rt.unload())
  const before = rt.pid
  await t.rejects(rt.call('hang', { timeoutMs: 100 }), { code: 'ERR_TIMEOUT' })
  t.equal((await rt.call('fresh')).toString(), 'fresh')
  t.not(rt.pid, before, 'a new child')
})

t.test("a plugin past memoryMb is reported as a crash with the limit's name", async t => {
  const rt = await iso(fixture('hard_host.so'), 'mem', { limits: { memoryMb: 256 } })
  t.teardown(() => rt.unload())
  t.equal((await rt.call('alloc:16')).toString(), 'ok', 'within the limit')
  const e = await rt.call('alloc:512').catch((err: DlhostError) => err) as DlhostError & { limit?: string }
  t.equal(e.code, 'ERR_PLUGIN_CRASHED')
  t.equal(e.limit, 'memoryMb')
  t.match(e.message, /memoryMb/)
  t.equal((await rt.call('after')).toString(), 'after')
})

t.test('host SIGKILLed: its children are gone within a second', async t => {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const host = spawn(process.execPath, ['-e', `
    const d = require(${JSON.stringify(dist)})
    ;(async () => {
      const a = await d.load(${JSON.stringify(fixture('hard_native.so'))}, 'a', { isolate: 'process' })
      const b = await d.load(${JSON.stringify(path.join(examples, 'libecho_host.so'))}, 'b', { isolate: 'process' })
      console.log(JSON.stringify([a.pid, b.pid]))
      setInterval(() => a.call('x'), 10)
    })()`], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  const pids = await new Promise<number[]>(resolve => host.stdout.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()))))
  t.ok(pids.every(alive), 'children running')
  host.kill('SIGKILL')
  const t0 = Date.now()
  while (pids.some(alive) && Date.now() - t0 < 1000) await new Promise(resolve => setTimeout(resolve, 20))
  t.notOk(pids.some(alive), `gone after ${Date.now() - t0} ms`)
})

t.test('a host that exits with isolated runtimes loaded does not hang; a worker can use them', async t => {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const r = spawnSync(process.execPath, ['-e', `
    const d = require(${JSON.stringify(dist)})
    ;(async () => {
      const rt = await d.load(${JSON.stringify(path.join(examples, 'libecho_host.so'))}, null, { isolate: 'process' })
      console.log((await rt.call('ok')).toString(), rt.pid)
    })()`], { env, encoding: 'utf8', timeout: 20000 })
  t.equal(r.status, 0, r.stderr)
  const pid = Number(r.stdout.trim().split(' ')[1])
  const t0 = Date.now()
  while (alive(pid) && Date.now() - t0 < 1000) await new Promise(resolve => setTimeout(resolve, 20))
  t.notOk(alive(pid), 'its child followed it')
  const w = new Worker(`
    const { parentPort } = require('worker_threads')
    const d = require(${JSON.stringify(dist)})
    d.load(${JSON.stringify(path.join(examples, 'libecho_native.so'))}, null, { isolate: 'process' })
      .then(async rt => { parentPort.postMessage((await rt.call('from a worker')).toString()); await rt.unload() })`, { eval: true })
  const msg = await new Promise(resolve => w.once('message', resolve))
  t.equal(msg, 'from a worker')
  await new Promise(resolve => w.once('exit', resolve))
})

const go1 = fixture('godriven.so')
const go2 = fixture('godriven2.so')
t.test('Go: 20 reloads under load (64 in flight) through isolation: 0 failed calls, versions only forward, no child left', { skip: !fs.existsSync(go2) && 'no Go toolchain' }, async t => {
  const { reloadable } = await import('../lib/index')
  const dir = t.testdir()
  const lib = path.join(dir, 'libgo.so')
  const install = (from: string): void => { fs.copyFileSync(from, lib + '.tmp'); fs.renameSync(lib + '.tmp', lib) }
  install(go1)
  const plugin = await reloadable(lib, null, { watch: false })
  const failures: unknown[] = []
  let answered = 0
  let backwards = 0
  let stop = false
  let serving = 'go:' // the prefix of the build serving since the last reload resolved
  const worker = async (): Promise<void> => {
    while (!stop) {
      const expect = serving
      try {
        const { response } = await plugin.callVersioned('x')
        const got = response.toString()
        if (!/^go2?:x$/.test(got)) failures.push(got)
        // A call made after a reload resolved is answered by the new build (or a newer one).
        if (!got.startsWith(expect) && serving === expect) backwards++
        answered++
      } catch (err) { failures.push(err) }
    }
  }
  const workers = Array.from({ length: 64 }, worker)
  for (let i = 0; i < 20; i++) {
    install(i % 2 === 0 ? go2 : go1)
    await plugin.reload()
    serving = i % 2 === 0 ? 'go2:' : 'go:'
  }
  stop = true
  await Promise.all(workers)
  t.same(failures, [], 'no failed call')
  t.equal(backwards, 0, 'versions only forward')
  t.equal(plugin.reloads, 20)
  t.ok(answered > 64, `${answered} calls answered`)
  const children = (): number[] => fs.readdirSync('/proc').filter(p => /^\d+$/.test(p)).map(Number).filter(p => {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8')
      return stat.includes('(dlhost-host)') && Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === process.pid && !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${p}/status`, 'utf8'))
    } catch { return false }
  })
  t.ok(children().length >= 1, 'the serving version runs in a child')
  await plugin.close()
  const t0 = Date.now()
  while (children().length > 0 && Date.now() - t0 < 2000) await new Promise(resolve => setTimeout(resolve, 20))
  t.same(children(), [], 'no child left after close()')
})

t.test('probe: a build whose constructor aborts is refused (ERR_PROBE_FAILED); the old version serves', async t => {
  const { reloadable } = await import('../lib/index')
  const dir = t.testdir()
  const src = path.join(dir, 'ctor.c')
  fs.writeFileSync(src, `
    #include <stdlib.h>
    #include <string.h>
    #include <stddef.h>
    #ifdef BAD
    __attribute__((constructor)) static void boom(void) { abort(); }
    #endif
    int dlhost_handle(void *s, const void *req, size_t len, void **rsp, size_t *rsp_len) {
      (void)s; *rsp = malloc(len ? len : 1); memcpy(*rsp, req, len); *rsp_len = len; return 0;
    }`)
  const good = path.join(dir, 'good.so')
  const bad = path.join(dir, 'bad.so')
  execFileSync('cc', ['-O1', '-fPIC', '-shared', '-o', good, src])
  execFileSync('cc', ['-O1', '-fPIC', '-shared', '-DBAD', '-o', bad, src])
  const lib = path.join(dir, 'libplugin.so')
  fs.copyFileSync(good, lib)
  const plugin = await reloadable(lib, null, { probe: true, settleMs: 20 })
  t.teardown(() => plugin.close())
  const error = new Promise<DlhostError>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no error event')), 15000)
    plugin.once('error', (e: DlhostError) => { clearTimeout(timer); resolve(e) })
  })
  fs.copyFileSync(bad, lib + '.tmp')
  fs.renameSync(lib + '.tmp', lib)
  const e = await error as DlhostError & { signal?: string }
  t.equal(e.code, 'ERR_PROBE_FAILED', 'the watched build was probed and refused')
  t.equal(e.signal, 'SIGABRT')
  await t.rejects(plugin.reload(), { code: 'ERR_PROBE_FAILED' }, 'reload() too')
  t.equal((await plugin.call('still')).toString(), 'still', 'the old version serves')
  t.equal(plugin.reloads, 0)
  // Mutated builds that pass validation and crash the loader: found the way
  // bench/fuzz-elf.js finds them (deterministic), then renamed over the
  // plugin: the probe refuses each, this process never dlopens one.
  const { parseElf } = await import('../lib/elf')
  const { checkHostCompatible, detectAbi } = await import('../lib/rules')
  const { probe } = await import('../lib/isolate/probe')
  let seed = 7
  const rnd = (n: number): number => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed % n }
  const base = fs.readFileSync(path.join(examples, 'libecho_host.so'))
  const crashing: Buffer[] = []
  for (let i = 0; i < 600 && crashing.length < 3; i++) {
    const m = Buffer.from(base)
    for (let k = 1 + rnd(8); k > 0; k--) m[rnd(m.length)] ^= 1 + rnd(255)
    try {
      const info = parseElf(m, 'mutant')
      checkHostCompatible(info, 'mutant')
      if (detectAbi(info).abi === null) continue
    } catch { continue }
    const f = path.join(dir, 'mutant.so')
    fs.writeFileSync(f, m)
    const died = await probe(f, 0, Buffer.alloc(0), false, f).then(() => false, (e: DlhostError & { signal?: string }) => e.signal !== null && e.signal !== undefined)
    if (died) crashing.push(m)
  }
  t.ok(crashing.length >= 1, `found ${crashing.length} mutants that pass validation and crash the loader`)
  for (const m of crashing) {
    fs.writeFileSync(lib + '.tmp', m)
    fs.renameSync(lib + '.tmp', lib)
    await t.rejects(plugin.reload(), { code: 'ERR_PROBE_FAILED' }, 'a mutant that crashes the loader: refused by the probe')
  }
  t.equal((await plugin.call('again')).toString(), 'again')
})

t.test('cpuSeconds and openFiles limits', async t => {
  const rt = await iso(fixture('hard_host.so'), 'limits', { limits: { cpuSeconds: 1, openFiles: 64 } })
  t.teardown(() => rt.unload())
  const n = Number((await rt.call('files')).toString())
  t.ok(n > 0 && n < 64, `open files stop below the limit (${n})`)
  const e = await rt.call('spin').catch((err: DlhostError) => err) as DlhostError & { limit?: string, signal?: string }
  t.equal(e.code, 'ERR_PLUGIN_CRASHED')
  t.equal(e.limit, 'cpuSeconds', 'the limit named')
  t.equal((await rt.call('after')).toString(), 'after')
})

t.test('isolated runtimes: bad options and the interface', async t => {
  await t.rejects(load(path.join(examples, 'libecho_host.so'), null, { isolate: 'thread' as 'process' }), { code: 'ERR_INVALID_ARG_TYPE' })
  const rt = await iso(path.join(examples, 'libecho_host.so'))
  t.teardown(() => rt.unload())
  t.throws(() => rt.callSync(), { code: 'ERR_NOT_SYNC' })
  t.match(rt.library, { path: path.join(examples, 'libecho_host.so'), mapped: false, runtimes: 1 })
  t.match(rt.stats, { inFlight: 0, version: { seq: 1 } })
  await t.rejects(rt.call(42 as unknown as string), { code: 'ERR_INVALID_ARG_TYPE' })
})
