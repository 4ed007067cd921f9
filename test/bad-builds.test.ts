// Watched bad builds are never silent: a file that settles and stays
// truncated, not ELF or empty is reported ('error', coded) while the old
// version serves on; a file still being written is not; a huge file is
// refused without being read into memory.
import t from 'tap'
import { execFileSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { reloadable, DlhostError, type Plugin, type PluginEvents } from '../lib/index'
import { root } from './lib/helpers'

const src = path.join(root, 'examples', 'echo-host', 'echo.c')
function build (dir: string, v: string): Buffer {
  const out = path.join(dir, `v${v}.so`)
  execFileSync('cc', ['-O1', '-fPIC', '-shared', '-I' + path.join(root, 'csrc', 'include'), `-DPLUGIN_VERSION="${v}"`, '-o', out, src])
  return fs.readFileSync(out)
}
function install (dst: string, bytes: Buffer | string): void {
  fs.writeFileSync(dst + '.tmp', bytes)
  fs.renameSync(dst + '.tmp', dst)
}
function nextEvent<T> (p: Plugin, ev: keyof PluginEvents, ms = 10000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${ev}' within ${ms} ms`)), ms)
    p.once(ev, (...args: unknown[]) => { clearTimeout(timer); resolve(args[0] as T) })
  })
}

t.test('a settled bad build is reported, the old version serves, the next good build is taken', async t => {
  const dir = t.testdir()
  const v1 = build(dir, '1')
  const v2 = build(dir, '2')
  const lib = path.join(dir, 'libplugin.so')
  install(lib, v1)
  const plugin = await reloadable(lib, null, { settleMs: 20, badBuildMs: 200 })
  t.teardown(() => plugin.close())
  for (const [what, bytes, code] of [
    ['truncated', v2.subarray(0, v2.length >> 1), 'ERR_INCOMPLETE'],
    ['plain text', 'not a library\n', 'ERR_NOT_ELF'],
    ['empty', '', 'ERR_NOT_ELF']
  ] as const) {
    const err = nextEvent<DlhostError>(plugin, 'error')
    install(lib, bytes)
    const e = await err
    t.equal(e.code, code, `${what}: ${code}`)
    t.equal(e.path, lib)
    t.equal((await plugin.call('version')).toString(), '1', `${what}: the old version serves`)
  }
  const reloaded = nextEvent(plugin, 'reload')
  install(lib, v2)
  await reloaded
  t.equal((await plugin.call('version')).toString(), '2', 'the next good build is taken')
})

t.test('a file still being written is not an error', async t => {
  const dir = t.testdir()
  const v1 = build(dir, '1')
  const v2 = build(dir, '2')
  const lib = path.join(dir, 'libplugin.so')
  install(lib, v1)
  const plugin = await reloadable(lib, null, { settleMs: 20, badBuildMs: 200 })
  t.teardown(() => plugin.close())
  const errors: unknown[] = []
  plugin.on('error', e => errors.push(e))
  const reloaded = nextEvent(plugin, 'reload')
  // Written in place, a slice every 50 ms: each settle sees it grow.
  const fd = fs.openSync(lib, 'r+')
  fs.ftruncateSync(fd, 0)
  const step = Math.ceil(v2.length / 12)
  for (let off = 0; off < v2.length; off += step) {
    fs.writeSync(fd, v2, off, Math.min(step, v2.length - off), off)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  fs.closeSync(fd)
  await reloaded
  t.same(errors.map(e => (e as DlhostError).code), [], 'no error while it grew')
  t.equal((await plugin.call('version')).toString(), '2')
})

t.test('a huge file is refused without being read', async t => {
  const dir = t.testdir()
  const v1 = build(dir, '1')
  const v2 = build(dir, '2')
  const lib = path.join(dir, 'libplugin.so')
  install(lib, v1)
  const plugin = await reloadable(lib, null, { settleMs: 20, maxBuildBytes: 64 * 1024 * 1024 })
  t.teardown(() => plugin.close())
  const rss0 = process.memoryUsage().rss
  const err = nextEvent<DlhostError>(plugin, 'error')
  const huge = path.join(dir, 'huge.tmp')
  const fd = fs.openSync(huge, 'w')
  fs.ftruncateSync(fd, 1.5 * 1024 * 1024 * 1024) // sparse: 1.5 GiB of nothing
  fs.closeSync(fd)
  fs.renameSync(huge, lib)
  const e = await err
  t.equal(e.code, 'ERR_BUILD_TOO_LARGE')
  t.ok(process.memoryUsage().rss - rss0 < 256 * 1024 * 1024, 'not read into memory')
  await t.rejects(plugin.reload(), { code: 'ERR_BUILD_TOO_LARGE' }, 'reload() refuses it too')
  t.equal((await plugin.call('version')).toString(), '1', 'the old version serves')
  const reloaded = nextEvent(plugin, 'reload')
  install(lib, v2)
  await reloaded
  t.equal((await plugin.call('version')).toString(), '2', 'the next good build is taken at once')
})
