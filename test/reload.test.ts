import t from 'tap'
import { execFileSync } from 'child_process'
import diagnostics from 'diagnostics_channel'
import fs from 'fs'
import path from 'path'
import { reloadable, Plugin, DlhostError, type ReloadEvent, type PluginEvents } from '../lib/index'
import { collectWarnings, foreignCopy, inMaps, root } from './lib/helpers'

const echo = path.join(root, 'examples', 'echo-host', 'echo.c')
const include = path.join(root, 'csrc', 'include')
const fixtureSrc = path.join(root, 'test', 'fixtures', 'reload')

function cc (out: string, src: string, flags: string[] = []): string {
  execFileSync('cc', ['-O1', '-fPIC', '-shared', '-I' + include, ...flags, '-o', out, src])
  return out
}
/** Replaces `dst` the way a linker does: write a side file, rename over. */
function install (dst: string, bytes: Buffer): void {
  fs.writeFileSync(dst + '.tmp', bytes)
  fs.renameSync(dst + '.tmp', dst)
}
function copyMappings (dir: string): string[] {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter(l => l.includes(dir + '/'))
}
function once<T> (p: Plugin, ev: keyof PluginEvents, ms = 10000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${ev} event within ${ms} ms`)), ms)
    p.once(ev, (...args: unknown[]) => { clearTimeout(timer); resolve(args[0] as T) })
  })
}

// One build with a fixed-width version string; each version patches it, so
// 200 distinct builds cost one compile.
function versionedBuilds (dir: string): (n: number) => Buffer {
  const base = fs.readFileSync(cc(path.join(dir, 'base.so'), echo, ['-DPLUGIN_VERSION="v000000"']))
  const marker = Buffer.from('v000000')
  const at = base.indexOf(marker)
  if (at < 0 || base.indexOf(marker, at + 1) >= 0) throw new Error('version marker not unique')
  return n => {
    const b = Buffer.from(base)
    b.write('v' + String(n).padStart(6, '0'), at, 'latin1')
    return b
  }
}

for (const strategy of ['shadow', 'drain'] as const) {
  t.test(`reload under load (${strategy}): 200 reloads, 256 calls in flight, nothing lost`, async t => {
    const dir = t.testdir()
    const so = path.join(dir, 'libplugin.so')
    const build = versionedBuilds(dir)
    install(so, build(1))
    const plugin = await reloadable(so, null, { strategy, watch: false })
    const copies = path.dirname(plugin.version.copy)
    t.teardown(() => plugin.close())
    const seqToVersion = new Map<number, string>()
    let issued = 0
    let settled = 0
    let failed = 0
    let backwards = 0
    let wrong = 0
    let stop = false
    const client = async (): Promise<void> => {
      let lastSeq = 0
      while (!stop) {
        issued++
        try {
          const { response, seq } = await plugin.callVersioned('version')
          settled++
          if (seq < lastSeq) backwards++
          lastSeq = seq
          const v = response.toString()
          const known = seqToVersion.get(seq)
          if (known === undefined) seqToVersion.set(seq, v)
          else if (known !== v) wrong++
        } catch (err) {
          settled++
          failed++
          t.error(err)
        }
      }
    }
    const clients = Array.from({ length: 256 }, client)
    for (let i = 2; i <= 201; i++) {
      install(so, build(i))
      await plugin.reload()
      t.equal(plugin.version.seq, i, `serving v${i}`) // seq grows by one per distinct content
    }
    stop = true
    await Promise.all(clients)
    t.equal(failed, 0, 'no call failed')
    t.equal(settled, issued, 'every call settled exactly once')
    t.equal(backwards, 0, 'versions only move forward for every client')
    t.equal(wrong, 0, 'each version answered with its own build')
    for (const [seq, v] of seqToVersion) if (v !== 'v' + String(seq).padStart(6, '0')) t.fail(`seq ${seq} answered ${v}`)
    t.equal(plugin.reloads, 200)
    t.ok(seqToVersion.size > 1, `calls were answered by ${seqToVersion.size} versions`)
    await plugin.close()
    t.same(copyMappings(copies), [], 'no mapping of any private copy is left in /proc/self/maps')
    t.notOk(fs.existsSync(copies), 'the copy directory is gone')
  })
}

t.test('in-place cp and fs.writeFile over the watched file: the process survives and reloads', async t => {
  const dir = t.testdir()
  const so = path.join(dir, 'libplugin.so')
  cc(so, echo, ['-DPLUGIN_VERSION="1"'])
  const v2 = cc(path.join(dir, 'v2.so'), echo, ['-DPLUGIN_VERSION="2"'])
  const v3 = cc(path.join(dir, 'v3.so'), echo, ['-DPLUGIN_VERSION="3"'])
  const plugin = await reloadable(so, null, { settleMs: 30 })
  t.teardown(() => plugin.close())
  let stop = false
  let failed = 0
  const clients = Array.from({ length: 32 }, async () => {
    while (!stop) await plugin.call('version').catch(() => { failed++ })
  })
  const inode = fs.statSync(so).ino
  let reloaded = once(plugin, 'reload')
  execFileSync('cp', [v2, so]) // rewrites the pages of the file in place
  await reloaded
  t.equal(fs.statSync(so).ino, inode, 'cp kept the inode: an in-place overwrite')
  t.equal((await plugin.call('version')).toString(), '2')
  reloaded = once(plugin, 'reload')
  fs.writeFileSync(so, fs.readFileSync(v3))
  await reloaded
  t.equal((await plugin.call('version')).toString(), '3')
  stop = true
  await Promise.all(clients)
  t.equal(failed, 0)
})

t.test('bad builds of each kind: coded error, the old version keeps serving, the next good build is taken', async t => {
  const dir = t.testdir()
  const so = path.join(dir, 'libplugin.so')
  install(so, fs.readFileSync(cc(path.join(dir, 'good1.so'), echo, ['-DPLUGIN_VERSION="good1"'])))
  const good2 = fs.readFileSync(cc(path.join(dir, 'good2.so'), echo, ['-DPLUGIN_VERSION="good2"']))
  const plugin = await reloadable(so, null, { watch: false })
  t.teardown(() => plugin.close())
  const errors: DlhostError[] = []
  plugin.on('error', e => errors.push(e))
  const published: unknown[] = []
  const onPublish = (m: unknown): void => { published.push(m) }
  diagnostics.subscribe('dlhost:error', onPublish)
  t.teardown(() => diagnostics.unsubscribe('dlhost:error', onPublish))
  const half = good2.subarray(0, good2.length >> 1)
  const bad: Array<[string, Buffer, string]> = [
    ['half-written', half, 'ERR_NOT_ELF'],
    ['not ELF', Buffer.from('#!/bin/sh\necho not a library\n'), 'ERR_NOT_ELF'],
    ['empty', Buffer.alloc(0), 'ERR_NOT_ELF'],
    ['wrong machine', fs.readFileSync(foreignCopy(path.join(dir, 'good2.so'), path.join(dir, 'arm.so'))), 'ERR_WRONG_ARCH'],
    ['missing entry', fs.readFileSync(cc(path.join(dir, 'noentry.so'), echo, ['-Ddlhost_handle=dlhost_handle_typo', '-Ddlhost_open=x_open', '-Ddlhost_close=x_close'])), 'ERR_SYMBOL_MISSING'],
    ['dlopen error', fs.readFileSync(cc(path.join(dir, 'undef.so'), path.join(fixtureSrc, 'undef-entry.c'))), 'ERR_DLOPEN'],
    ['init failure', fs.readFileSync(cc(path.join(dir, 'badinit.so'), path.join(fixtureSrc, 'badinit.c'))), 'ERR_INIT_FAILED']
  ]
  for (const [what, bytes, code] of bad) {
    install(so, bytes)
    await t.rejects(plugin.reload(), { code }, what)
    t.equal(errors.at(-1)?.code, code, `${what}: an error event`)
    t.equal((await plugin.call('version')).toString(), 'good1', `${what}: the old version keeps serving`)
    t.equal(plugin.version.seq, 1)
    t.equal(plugin.versions.length, 1, 'nothing half-loaded stays around')
  }
  t.equal(published.length, bad.length, 'every bad build went to diagnostics_channel dlhost:error')
  install(so, good2)
  await plugin.reload()
  t.equal((await plugin.call('version')).toString(), 'good2', 'the next good build is taken')
  t.equal(plugin.version.seq, 2)
})

t.test('a bad build with no error listener does not take the process down', async t => {
  const dir = t.testdir()
  const so = path.join(dir, 'libplugin.so')
  cc(so, echo)
  const plugin = await reloadable(so, null, { settleMs: 20 })
  t.teardown(() => plugin.close())
  install(so, Buffer.from('garbage'))
  await t.rejects(plugin.reload(), { code: 'ERR_NOT_ELF' })
  t.equal((await plugin.call('version')).toString(), '1')
})

t.test('NODELETE under drain: stuck, then the fallback loads the new build side by side', async t => {
  const dir = t.testdir()
  const so = path.join(dir, 'libplugin.so')
  install(so, fs.readFileSync(cc(path.join(dir, 'a.so'), echo, ['-DPLUGIN_VERSION="a"', '-Wl,-z,nodelete'])))
  const warnings = collectWarnings(t, 'DLHOST_UNRELOADABLE')
  const plugin = await reloadable(so, null, { strategy: 'drain', watch: false })
  t.teardown(() => plugin.close())
  await new Promise(resolve => setImmediate(resolve))
  t.match(warnings, [{ message: /DF_1_NODELETE: glibc never unloads it, so in this process every reload leaves the previous version mapped\. linked with -z nodelete/ }])
  const first = plugin.version
  const stuck = once<{ version: { seq: number }, reason: string }>(plugin, 'stuck')
  install(so, fs.readFileSync(cc(path.join(dir, 'b.so'), echo, ['-DPLUGIN_VERSION="b"', '-Wl,-z,nodelete'])))
  await plugin.reload()
  const ev = await stuck
  t.equal(ev.version.seq, first.seq)
  t.equal(ev.reason, 'NODELETE')
  t.equal((await plugin.call('version')).toString(), 'b', 'the new build serves')
  t.ok(copyMappings(path.dirname(first.copy)).some(l => l.includes(first.copy)), 'the old copy is still mapped, as reported')
})

t.test('auto: a library that can neither coexist nor unload: stuck event and ERR_STUCK, old keeps serving', async t => {
  const dir = t.testdir()
  const src = path.join(dir, 'unique.cc')
  fs.writeFileSync(src, `
    #include <cstdlib>
    #include <cstring>
    #include <cstddef>
    inline int &counter() { static int c = 0; return c; }
    extern "C" int dlhost_handle(void *, const void *, size_t, void **rsp, size_t *len) {
      #ifdef V2
      int bump = 2;
      #else
      int bump = 1;
      #endif
      char *b = (char *)malloc(16); int n = (counter() += bump); memcpy(b, &n, sizeof n); *rsp = b; *len = sizeof n; return 0;
    }`)
  const so = path.join(dir, 'libunique.so')
  execFileSync('g++', ['-O1', '-fPIC', '-shared', '-o', so, src])
  // isolate: false — by default 'auto' would isolate it (see the isolation tests).
  const warnings = collectWarnings(t, 'DLHOST_UNRELOADABLE')
  const plugin = await reloadable(so, null, { watch: false, isolate: false })
  t.teardown(() => plugin.close())
  await new Promise(resolve => setImmediate(resolve)) // process warnings are emitted on the next tick
  t.match(warnings, [{ name: 'DlhostWarning', code: 'DLHOST_UNRELOADABLE', message: /STB_GNU_UNIQUE symbols \(_Z.*\): glibc never unloads it, so in this process a reload fails with ERR_STUCK.*-fno-gnu-unique/ }], 'flagged when it is loaded')
  const stuck = once<{ reason: string }>(plugin, 'stuck')
  execFileSync('g++', ['-O1', '-fPIC', '-shared', '-DV2', '-o', so + '.tmp', src])
  fs.renameSync(so + '.tmp', so)
  await t.rejects(plugin.reload(), { code: 'ERR_STUCK', message: /restart the process, or run it isolated \(isolate: 'process'\)\. .*Build with -fno-gnu-unique/ })
  t.match((await stuck).reason, /GNU_UNIQUE/)
  t.equal(plugin.version.seq, 1)
  t.equal((await plugin.call('x')).length, 4, 'the old version keeps serving')
})

t.test('private copies: a 0700 directory; copies removed once unmapped, and on close', async t => {
  const dir = t.testdir()
  const so = path.join(dir, 'libplugin.so')
  cc(so, echo)
  const plugin = await reloadable(so, null, { watch: false, copyDir: dir })
  const copies = path.dirname(plugin.version.copy)
  t.equal(path.dirname(copies), fs.realpathSync(dir), 'under copyDir')
  t.equal(fs.statSync(copies).mode & 0o777, 0o700)
  t.not(path.basename(plugin.version.copy), 'libplugin.so', 'never the user file name')
  const first = plugin.version.copy
  const drained = once(plugin, 'drained')
  install(so, fs.readFileSync(cc(path.join(dir, 'v2.so'), echo, ['-DPLUGIN_VERSION="2"'])))
  await plugin.reload()
  await drained
  t.notOk(fs.existsSync(first), 'the old copy is deleted once verified unmapped')
  t.ok(fs.existsSync(plugin.version.copy))
  const sameContent = plugin.version
  const later = new Date(Date.now() + 3000)
  fs.utimesSync(so, later, later)
  await plugin.reload()
  t.same(plugin.version, sameContent, 'a new mtime with the same content is not a new version')
  t.same(fs.readdirSync(copies), [path.basename(plugin.version.copy)], 'no stray copy left behind')
  await plugin.close()
  await plugin.close() // idempotent
  t.notOk(fs.existsSync(copies), 'the directory goes on close')
  await t.rejects(plugin.call('x'), { code: 'ERR_CLOSED' })
})

t.test('watch: extra files reload the same library; reload events go to diagnostics_channel', async t => {
  const dir = t.testdir({ 'config.json': '{"a":1}' })
  const so = path.join(dir, 'libplugin.so')
  cc(so, echo)
  const seen: unknown[] = []
  const onReload = (m: unknown): void => { seen.push(m) }
  diagnostics.subscribe('dlhost:reload', onReload)
  t.teardown(() => diagnostics.unsubscribe('dlhost:reload', onReload))
  const plugin = await reloadable(so, null, { settleMs: 20, watch: { files: [path.join(dir, 'config.json')] } })
  t.teardown(() => plugin.close())
  const reloaded = once<{ from: { seq: number }, to: { seq: number } }>(plugin, 'reload')
  fs.writeFileSync(path.join(dir, 'config.json'), '{"a":2}')
  const ev = await reloaded
  t.equal(ev.from.seq, ev.to.seq, 'same content: a fresh runtime of the same version')
  t.equal(seen.length, 1)
  t.equal((await plugin.call('version')).toString(), '1')
})

/** Polls `cond` (every 5 ms) until it holds; fails the wait after `ms`. */
async function until (what: string, cond: () => boolean, ms = 10000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

t.test('watch: the new build is prepared while the file settles, and a superseded one is discarded', async t => {
  const dir = t.testdir()
  const build = (n: number): Buffer => fs.readFileSync(cc(path.join(dir, `v${n}.so`), echo, [`-DPLUGIN_VERSION="${n}"`]))
  const builds = [build(1), build(2), build(3)]
  interface PrepareMsg { path: string, sha256: string, copy: string, loaded: boolean }
  const cases = [
    ['shadow', 'load', true],
    ['shadow', 'copy', false],
    ['drain', 'load', false], // one at a time: never dlopen'ed beside the old one
    ['shadow', 'off', false]
  ] as const
  await t.test('reload() takes the prepared copy of the same content before the file settled', async t => {
    const so = path.join(dir, 'lib-explicit.so')
    install(so, builds[0] as Buffer)
    let prepared: PrepareMsg | null = null
    const got = new Promise<void>((resolve, reject) => {
      // (a ref'd timer: the watcher alone does not keep the process alive)
      const timer = setTimeout(() => reject(new Error('nothing prepared within 10 s')), 10000)
      const on = (m: unknown): void => {
        if ((m as PrepareMsg).path !== so) return
        prepared = m as PrepareMsg
        diagnostics.unsubscribe('dlhost:prepare', on)
        clearTimeout(timer)
        resolve()
      }
      diagnostics.subscribe('dlhost:prepare', on)
    })
    const plugin = await reloadable(so, null, { settleMs: 60000 })
    t.teardown(() => plugin.close())
    install(so, builds[1] as Buffer)
    await got
    const events: ReloadEvent[] = []
    plugin.on('reload', ev => events.push(ev))
    await plugin.reload()
    t.equal(events.length, 1)
    t.equal(events[0]?.prepared, true, 'prepared')
    t.equal(plugin.version.copy, (prepared as PrepareMsg | null)?.copy, 'the prepared copy serves')
    t.equal((await plugin.call('version')).toString(), '2')
    await plugin.close()
    t.equal(events.length, 1, 'the watcher, closed before it settled, reloaded nothing more')
  })

  for (const [strategy, prepare, preloads] of cases) {
    await t.test(`${strategy}, prepare: '${prepare}'`, async t => {
      const so = path.join(dir, `lib-${strategy}-${prepare}.so`)
      install(so, builds[0] as Buffer)
      const msgs: PrepareMsg[] = []
      const waiters: Array<() => void> = []
      const onPrepare = (m: unknown): void => {
        if ((m as PrepareMsg).path !== so) return
        msgs.push(m as PrepareMsg)
        waiters.shift()?.()
      }
      const nextPrepare = async (): Promise<PrepareMsg> => {
        const n = msgs.length
        await new Promise<void>(resolve => waiters.push(resolve))
        return msgs[n] as PrepareMsg
      }
      diagnostics.subscribe('dlhost:prepare', onPrepare)
      t.teardown(() => diagnostics.unsubscribe('dlhost:prepare', onPrepare))
      // A settle period long enough for both builds below to land inside it.
      const settleMs = 400
      const plugin = await reloadable(so, null, { strategy, prepare, settleMs })
      t.teardown(() => plugin.close())
      const copies = path.dirname(plugin.version.copy)
      const reloaded = once<ReloadEvent>(plugin, 'reload')
      if (prepare !== 'off') {
        let p = nextPrepare()
        install(so, builds[1] as Buffer)
        const m2 = await p
        t.ok(fs.existsSync(m2.copy), 'v2 copied while it settles')
        t.equal(m2.loaded, preloads, `v2 ${preloads ? 'dlopen\'ed' : 'not dlopen\'ed'} before it settled`)
        t.equal(inMaps(m2.copy), preloads, 'as /proc/self/maps shows')
        p = nextPrepare()
        install(so, builds[2] as Buffer) // v3 before v2 settled: v2 never serves
        const m3 = await p
        t.not(m3.copy, m2.copy)
        await until('the superseded copy is removed', () => !fs.existsSync(m2.copy))
        t.notOk(inMaps(m2.copy), 'the superseded build is unmapped')
        const ev = await reloaded
        t.equal(ev.prepared, true, 'the reload took the prepared copy')
        t.equal(ev.to.copy, m3.copy)
        t.ok(ev.ms >= 0 && ev.ms < settleMs, `counted from the file settled, not from its change (${ev.ms.toFixed(3)} ms)`)
        t.equal(ev.ms, Math.round(ev.ms * 100) / 100, 'reported to 0.01 ms')
      } else {
        install(so, builds[1] as Buffer)
        const ev = await reloaded
        t.equal(ev.prepared, false)
        t.same(msgs, [], 'nothing prepared')
      }
      t.equal((await plugin.call('version')).toString(), prepare === 'off' ? '2' : '3')
      await until('only the serving copy is left', () => fs.readdirSync(copies).length === 1)
      t.same(copyMappings(copies).filter(l => !l.includes(plugin.version.copy)), [], 'nothing else of the store is mapped')
    })
  }
})

t.test('bad arguments', async t => {
  await t.rejects(reloadable(42 as unknown as string), TypeError)
  await t.rejects(reloadable('/x.so', null, { strategy: 'fast' as 'auto' }), TypeError)
  await t.rejects(reloadable('/x.so', null, { settleMs: -1 }), RangeError)
  await t.rejects(reloadable('/x.so', null, { prepare: 'all' as 'load' }), TypeError)
  await t.rejects(reloadable('/nonexistent/lib.so'), { code: 'ERR_NOT_FOUND' })
})
