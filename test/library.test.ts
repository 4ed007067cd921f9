import t from 'tap'
import fs from 'fs'
import path from 'path'
import { Worker } from 'worker_threads'
import { open, libraries, DlhostError } from '../lib/index'
import { copyOf, dist, fixture, foreignCopy, inMaps, runNode } from './lib/helpers'

t.test('two opens of one identity share a handle; refs counts them; a symlink is the same identity', async t => {
  const dir = t.testdir()
  const so = copyOf(fixture('plain.so'), dir)
  fs.symlinkSync(so, path.join(dir, 'link.so'))
  const a = open(so, { pin: false })
  const b = open(so, { pin: false })
  const c = open(path.join(dir, 'link.so'), { pin: false })
  t.equal(a.refs, 3)
  t.equal(c.realPath, so)
  t.same(a.version, c.version)
  t.equal(a.version.seq, 1)
  t.match(a.version.sha256, /^[0-9a-f]{64}$/)
  const rows = libraries().filter(r => r.path === so)
  t.equal(rows.length, 1, 'one registry row for the identity')
  t.equal(rows[0].refs, 3)
  a.release()
  a.release() // idempotent per object
  t.equal(b.refs, 2)
  b.release()
  t.ok(inMaps(so), 'still mapped while a reference remains')
  c.release()
  t.notOk(inMaps(so), 'unpinned: gone from /proc/self/maps after the last release')
  t.equal(c.mapped, false)
  t.equal(c.stuck, null)
  t.equal(libraries().filter(r => r.path === so).length, 0)
})

t.test('has() resolves symbols; after release it throws ERR_RELEASED', async t => {
  const so = copyOf(fixture('plain.so'), t.testdir())
  const lib = open(so, { pin: false })
  t.equal(lib.has('plain_answer'), true)
  t.equal(lib.has('no_such_symbol'), false)
  t.throws(() => lib.has(42 as unknown as string), { code: 'ERR_INVALID_ARG_TYPE' })
  lib.release()
  t.throws(() => lib.has('plain_answer'), { code: 'ERR_RELEASED' })
})

t.test('pinned (the default) is never dlclosed and stays pinned', async t => {
  const so = copyOf(fixture('plain.so'), t.testdir())
  const a = open(so)
  t.equal(a.pinned, true)
  const b = open(so, { pin: false })
  t.equal(b.pinned, true, 'a later unpinned open does not unpin')
  a.release()
  b.release()
  t.ok(inMaps(so), 'pinned library stays in /proc/self/maps')
  t.equal(a.mapped, true)
  t.equal(a.stuck, null, 'pinned is a policy, not stuck')
  const row = libraries().find(r => r.path === so)
  t.ok(row)
  t.equal(row?.refs, 0)
  t.equal(row?.pinned, true)
  const again = open(so, { pin: false })
  t.equal(again.refs, 1)
  again.release()
  t.ok(inMaps(so))
})

for (const [name, reason] of [['nodelete.so', 'NODELETE'], ['unique.so', 'GNU_UNIQUE'], ['tls.so', 'TLS destructors pending']]) {
  t.test(`a library that cannot unload is reported stuck: ${reason}`, async t => {
    const so = copyOf(fixture(name), t.testdir())
    const lib = open(so, { pin: false })
    lib.release()
    t.ok(inMaps(so), 'dlclose ran, yet the object is still in /proc/self/maps')
    t.equal(lib.mapped, true)
    t.equal(lib.stuck, reason)
    const row = libraries().find(r => r.path === so)
    t.equal(row?.stuck, reason)
    t.equal(row?.refs, 0)
    t.equal(row?.mapped, true)
  })
}

t.test('version: seq grows per distinct content; same content, new mtime, same seq', async t => {
  const dir = t.testdir()
  const so = path.join(dir, 'lib.so')
  fs.copyFileSync(fixture('plain.so'), so)
  const v1 = open(so, { pin: false })
  const first = v1.version
  v1.release()
  t.notOk(inMaps(so))
  const later = new Date(Date.now() + 5000)
  fs.utimesSync(so, later, later)
  const same = open(so, { pin: false })
  t.equal(same.version.seq, first.seq)
  t.equal(same.version.sha256, first.sha256)
  t.not(same.version.mtimeMs, first.mtimeMs)
  same.release()
  fs.copyFileSync(fixture('plain2.so'), path.join(dir, 'tmp.so'))
  fs.renameSync(path.join(dir, 'tmp.so'), so)
  const v2 = open(so, { pin: false })
  t.equal(v2.version.seq, 2)
  t.not(v2.version.sha256, first.sha256)
  v2.release()
})

t.test('a path replaced while its old version is loaded: ERR_STALE_PATH, never old code', async t => {
  const dir = t.testdir()
  const so = path.join(dir, 'lib.so')
  fs.copyFileSync(fixture('plain.so'), so)
  const old = open(so, { pin: false })
  fs.copyFileSync(fixture('plain2.so'), path.join(dir, 'tmp.so'))
  fs.renameSync(path.join(dir, 'tmp.so'), so) // like a linker or mv: new inode
  t.throws(() => open(so, { pin: false }), { code: 'ERR_STALE_PATH', path: so, message: /release the previous version's 1 reference\(s\) first/ })
  old.release()
  const fresh = open(so, { pin: false })
  t.equal(fresh.version.seq, 2)
  fresh.release()
})

t.test('ERR_STALE_PATH after a default (pinned) open: the hint can be followed', async t => {
  const dir = t.testdir()
  const so = path.join(dir, 'lib.so')
  fs.copyFileSync(fixture('plain.so'), so)
  // In a child: a pinned library stays mapped until its process exits.
  const r = runNode(`const d = require(${JSON.stringify(dist)}); const fs = require('fs')
    d.open(${JSON.stringify(so)})
    fs.copyFileSync(${JSON.stringify(fixture('plain2.so'))}, ${JSON.stringify(so + '.tmp')}); fs.renameSync(${JSON.stringify(so + '.tmp')}, ${JSON.stringify(so)})
    try { d.open(${JSON.stringify(so)}) } catch (e) { console.log(e.code + ' ' + e.message) }`)
  t.equal(r.status, 0, r.stderr)
  t.match(r.stdout, /^ERR_STALE_PATH .* was replaced while the previous version is still loaded/)
  t.match(r.stdout, /is pinned \(open\(\) and load\(\) pin by default\) and stays mapped until the process exits: load the new build from a new path, or use reloadable\(\)/)
  t.notMatch(r.stdout, /release it first/)
})

t.test('ERR_NOT_FOUND says where it looked: the resolved path and the cwd; a bare name is not searched for', async t => {
  const dir = t.testdir()
  t.throws(() => open(path.join(dir, 'missing.so')), { code: 'ERR_NOT_FOUND', message: new RegExp(`resolved to ${path.join(dir, 'missing.so')} \\(cwd ${process.cwd()}\\)`) })
  t.throws(() => open('libm.so.6'), { code: 'ERR_NOT_FOUND', message: /resolved to .*libm\.so\.6 \(cwd .*\); a path is a file path: no library search path is used, unlike dlopen\("libm\.so\.6"\)/ })
})

t.test('bad input: coded errors, no crash', async t => {
  const dir = t.testdir({ 'text.so': 'hello, not an ELF file\n', 'empty.so': '', sub: {} })
  t.throws(() => open(path.join(dir, 'missing.so')), { code: 'ERR_NOT_FOUND', path: path.join(dir, 'missing.so') })
  t.throws(() => open(path.join(dir, 'sub')), { code: 'ERR_IS_DIRECTORY' })
  t.throws(() => open(path.join(dir, 'text.so')), { code: 'ERR_NOT_ELF' })
  t.throws(() => open(path.join(dir, 'empty.so')), { code: 'ERR_NOT_ELF' })
  const whole = fs.readFileSync(fixture('plain.so'))
  for (const n of [10, 64, 200, whole.length - 100]) {
    const p = path.join(dir, `trunc${n}.so`)
    fs.writeFileSync(p, whole.subarray(0, n))
    t.throws(() => open(p), { code: 'ERR_NOT_ELF' }, `truncated at ${n}`)
  }
  t.throws(() => open(foreignCopy(fixture('plain.so'), path.join(dir, 'arm.so'))), { code: 'ERR_WRONG_ARCH' })
  const err = (() => { try { open(fixture('undef.so'), { pin: false }) } catch (e) { return e } })()
  t.ok(err instanceof DlhostError)
  t.equal((err as DlhostError).code, 'ERR_DLOPEN')
  t.match((err as DlhostError).loaderMessage, /undefined symbol: dlhost_fixture_missing_symbol/)
  t.match((err as DlhostError).message, /undefined symbol/)
  const lazy = open(fixture('undef.so'), { pin: false, lazy: true })
  t.equal(lazy.has('undef_call'), true, 'RTLD_LAZY defers the missing symbol')
  lazy.release()
  t.throws(() => open(42 as unknown as string), { code: 'ERR_INVALID_ARG_TYPE', name: 'TypeError' })
  t.throws(() => open(''), TypeError)
  t.throws(() => open(fixture('plain.so'), { pin: 'yes' as unknown as boolean }), { code: 'ERR_INVALID_ARG_TYPE' })
  t.throws(() => open(fixture('plain.so'), null as unknown as object), TypeError)
})

t.test('an unreadable library: ERR_ACCESS (checked as an unprivileged user)', async t => {
  const dir = t.testdir()
  fs.chmodSync(dir, 0o755)
  const so = path.join(dir, 'secret.so')
  fs.copyFileSync(fixture('plain.so'), so)
  fs.chmodSync(so, 0o600)
  if (process.getuid?.() !== 0) {
    const r = runNode(`try { require(${JSON.stringify(dist)}).open(${JSON.stringify(so)}) } catch (e) { console.log(e.code) }`, { env: { ...process.env } })
    t.equal(r.stdout.trim(), process.getuid?.() === fs.statSync(so).uid ? '' : 'ERR_ACCESS')
    return
  }
  // root reads everything: run the check as nobody.
  const r = runNode(`try { require(${JSON.stringify(dist)}).open(${JSON.stringify(so)}); console.log('opened') } catch (e) { console.log(e.code) }`, { uid: 65534, gid: 65534 })
  t.equal(r.stdout.trim(), 'ERR_ACCESS', r.stderr)
})

t.test('worker_threads: a worker opens, leaves a reference, is terminated; its reference is released', async t => {
  const so = copyOf(fixture('plain.so'), t.testdir())
  const mine = open(so, { pin: false })
  const w = new Worker(`
    const { parentPort, workerData } = require('worker_threads')
    const d = require(workerData.dist)
    const a = d.open(workerData.so, { pin: false })
    const b = d.open(workerData.so, { pin: false })
    b.release()
    parentPort.postMessage(a.refs)
    setInterval(() => {}, 1000) // stay alive until terminated
  `, { eval: true, workerData: { dist, so } })
  const refsInWorker = await new Promise(resolve => w.once('message', resolve))
  t.equal(refsInWorker, 2, 'the registry is process-wide: main + worker')
  await w.terminate()
  t.equal(mine.refs, 1, 'the cleanup hook released what the worker left behind')
  t.ok(inMaps(so))
  mine.release()
  t.notOk(inMaps(so), 'and the last release unmapped it')
})

t.test('the finalizer releases a Library that was never released', async t => {
  const so = copyOf(fixture('plain.so'), t.testdir())
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    ;(() => { d.open(${JSON.stringify(so)}, { pin: false }) })()
    const fs = require('fs')
    const mapped = () => fs.readFileSync('/proc/self/maps', 'utf8').includes(${JSON.stringify(so)})
    let tries = 0
    const tick = () => {
      global.gc()
      if (!mapped()) { console.log('unmapped after', tries); return }
      if (++tries > 200) { console.log('still mapped'); process.exitCode = 1; return }
      setImmediate(tick)
    }
    console.log('mapped before', mapped())
    tick()
  `, { args: ['--expose-gc'] })
  t.match(r.stdout, /mapped before true/)
  t.match(r.stdout, /unmapped after \d+/, r.stderr)
  t.equal(r.status, 0)
})

t.test('a process with libraries open exits promptly', async t => {
  const so = copyOf(fixture('plain.so'), t.testdir())
  const r = runNode(`
    const d = require(${JSON.stringify(dist)})
    d.open(${JSON.stringify(so)}, { pin: false })
    d.open(${JSON.stringify(fixture('nodelete.so'))})
    console.log('done')
  `)
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout.trim(), 'done')
  t.ok(r.ms < 10000, `exited in ${r.ms} ms`)
})
