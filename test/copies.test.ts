import t from 'tap'
import * as crypto from 'crypto'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { execFileSync } from 'child_process'
import { CopyStore, openStoreCount, SYNC_SNAPSHOT_LIMIT } from '../lib/reload/copies'
import { DlhostError } from '../lib/errors'
import { runChild } from './lib/helpers'

const root = path.join(__dirname, '..')
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0

/** A scratch directory (owned by us, 0755) removed after the test. */
function scratch (tt: Tap): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-copies-test-'))
  fs.chmodSync(d, 0o755)
  tt.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

/** The type of a subtest's `t`. */
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

function sha (buf: Buffer): string {
  return crypto.createHash('sha256').update(buf).digest('hex')
}

async function rejectsCode (tt: Tap, p: Promise<unknown>, code: string, msg: string): Promise<unknown> {
  try {
    await p
  } catch (err) {
    tt.equal((err as { code?: unknown }).code, code, msg)
    return err
  }
  tt.fail(`${msg}: did not reject`)
  return undefined
}

t.test('create: a private 0700 directory of our own', async (t) => {
  const store = await CopyStore.create()
  t.teardown(() => store.close())
  const st = fs.lstatSync(store.dir)
  t.ok(st.isDirectory(), 'is a directory')
  t.notOk(st.isSymbolicLink(), 'not a symlink')
  t.equal(st.mode & 0o7777, 0o700, 'mode 0700')
  if (typeof process.getuid === 'function') t.equal(st.uid, process.getuid(), 'owned by us')
  t.equal(path.dirname(store.dir), fs.realpathSync(os.tmpdir()), 'under os.tmpdir()')
  t.match(path.basename(store.dir), /^dlhost-\d+\.\d+-.{6}$/, 'mkdtemp name: dlhost-<pid>.<start time>-XXXXXX')
  t.same(store.list(), [])

  const parent = scratch(t)
  const s2 = await CopyStore.create({ dir: parent })
  t.teardown(() => s2.close())
  t.equal(path.dirname(s2.dir), fs.realpathSync(parent), 'under opts.dir')
  t.equal(fs.statSync(s2.dir).mode & 0o7777, 0o700)
  t.not(s2.dir, store.dir)
})

t.test('create: mode is 0700 whatever the umask', async (t) => {
  const old = process.umask(0)
  try {
    const store = await CopyStore.create({ dir: scratch(t) })
    t.teardown(() => store.close())
    t.equal(fs.statSync(store.dir).mode & 0o7777, 0o700)
    const snap = await store.snapshot(__filename)
    t.equal(fs.statSync(snap.path).mode & 0o7777, 0o700, 'copy mode 0700 too')
  } finally {
    process.umask(old)
  }
})

t.test('create: argument and parent checks', async (t) => {
  await t.rejects(CopyStore.create({ dir: 42 as unknown as string }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
  await t.rejects(CopyStore.create({ dir: '' }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
  await t.rejects(CopyStore.create(null as unknown as undefined), { name: 'TypeError' })
  const d = scratch(t)
  await rejectsCode(t, CopyStore.create({ dir: path.join(d, 'missing') }), 'ERR_NOT_FOUND', 'missing parent')
  fs.writeFileSync(path.join(d, 'file'), 'x')
  await rejectsCode(t, CopyStore.create({ dir: path.join(d, 'file') }), 'ERR_COPY', 'parent is a file')

  // world-writable without the sticky bit: anyone could swap our store out
  const open = path.join(d, 'open')
  fs.mkdirSync(open)
  fs.chmodSync(open, 0o777)
  const e = await rejectsCode(t, CopyStore.create({ dir: open }), 'ERR_COPY', 'o+w non-sticky parent refused')
  t.match((e as Error).message, /writable by others/)
  t.same(fs.readdirSync(open), [], 'nothing created there')
  // sticky (like /tmp) is fine
  fs.chmodSync(open, 0o1777)
  const ok = await CopyStore.create({ dir: open })
  t.equal(path.dirname(ok.dir), fs.realpathSync(open))
  await ok.close()
  // group-writable, not sticky: refused as well
  fs.chmodSync(open, 0o775)
  await rejectsCode(t, CopyStore.create({ dir: open }), 'ERR_COPY', 'g+w non-sticky parent refused')
  // ... also when it is an ancestor that is open
  fs.chmodSync(open, 0o777)
  fs.mkdirSync(path.join(open, 'inner'))
  fs.chmodSync(path.join(open, 'inner'), 0o755)
  await rejectsCode(t, CopyStore.create({ dir: path.join(open, 'inner') }), 'ERR_COPY', 'open ancestor refused')
})

t.test('create: symlinked parents', async (t) => {
  const d = scratch(t)
  const real = path.join(d, 'real')
  fs.mkdirSync(real, { mode: 0o755 })
  const link = path.join(d, 'link')
  fs.symlinkSync(real, link)
  const store = await CopyStore.create({ dir: link })
  t.teardown(() => store.close())
  t.equal(path.dirname(store.dir), fs.realpathSync(real), 'our own symlink is resolved and used')

  if (!isRoot) {
    t.comment('not root: cannot plant a symlink owned by someone else')
    return
  }
  // A symlink planted by someone else (the /tmp trap) is refused.
  const trap = path.join(d, 'trap')
  fs.symlinkSync(real, trap)
  fs.lchownSync(trap, 12345, 12345)
  await rejectsCode(t, CopyStore.create({ dir: trap }), 'ERR_COPY', 'foreign symlink refused')
  // A symlink to a directory owned by someone else is refused too.
  const theirs = path.join(d, 'theirs')
  fs.mkdirSync(theirs, { mode: 0o755 })
  fs.chownSync(theirs, 12345, 12345)
  const link2 = path.join(d, 'link2')
  fs.symlinkSync(theirs, link2)
  await rejectsCode(t, CopyStore.create({ dir: link2 }), 'ERR_COPY', 'directory of another user refused')
  t.same(fs.readdirSync(theirs), [], 'nothing created in it')
})

t.test('snapshot: content, hash, size, name, mode', async (t) => {
  const d = scratch(t)
  const store = await CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const src = path.join(d, 'lib.so')
  const content = crypto.randomBytes(100_000)
  fs.writeFileSync(src, content)
  const snap = await store.snapshot(src)
  t.equal(snap.sha256, sha(content), 'sha256 of the source')
  t.equal(snap.size, content.length)
  t.ok(snap.bytes.equals(content), 'bytes returned')
  t.ok(fs.readFileSync(snap.path).equals(content), 'copy holds the content')
  t.equal(path.dirname(snap.path), store.dir, 'inside the store')
  t.match(path.basename(snap.path), /^[0-9a-f]{32}\.so$/, '128 random bits + .so')
  const st = fs.lstatSync(snap.path)
  t.ok(st.isFile())
  t.equal(st.mode & 0o777, 0o700)
  t.equal(snap.sourceStat.ino, fs.statSync(src).ino, 'sourceStat is the source file')
  t.equal(snap.sourceStat.size, content.length)
  t.same(store.list(), [snap.path])

  // the user may now rewrite their file in place: the copy does not change
  fs.writeFileSync(src, 'rewritten')
  t.ok(fs.readFileSync(snap.path).equals(content), 'copy independent of the source')

  // relative source paths work
  const rel = path.relative(process.cwd(), src)
  const snap2 = await store.snapshot(rel)
  t.equal(snap2.sha256, sha(Buffer.from('rewritten')))
  t.same(store.list(), [snap.path, snap2.path])

  // empty file
  const empty = path.join(d, 'empty.so')
  fs.writeFileSync(empty, '')
  const snap3 = await store.snapshot(empty)
  t.equal(snap3.size, 0)
  t.equal(snap3.sha256, sha(Buffer.alloc(0)))
})

t.test('snapshot: names are unpredictable and unique', async (t) => {
  const d = scratch(t)
  const store = await CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const src = path.join(d, 'lib.so')
  fs.writeFileSync(src, 'same content')
  const snaps = await Promise.all(Array.from({ length: 40 }, async () => await store.snapshot(src)))
  const names = snaps.map((s) => path.basename(s.path))
  t.equal(new Set(names).size, names.length, 'all distinct, even for the same content')
  for (const n of names) t.match(n, /^[0-9a-f]{32}\.so$/)
  t.equal(new Set(snaps.map((s) => s.sha256)).size, 1, 'same hash')
  t.equal(store.list().length, 40)
  t.equal(fs.readdirSync(store.dir).length, 40)
})

t.test('snapshot: O_EXCL|O_NOFOLLOW — never writes through an existing name', async (t) => {
  const d = scratch(t)
  const names = ['aaaa.so', 'bbbb.so', 'cccc.so']
  let i = 0
  const store = await CopyStore.create({ dir: d, randomName: () => names[i++ % names.length] })
  t.teardown(() => store.close())
  const src = path.join(d, 'lib.so')
  fs.writeFileSync(src, 'NEW CONTENT')

  // a pre-created file with the name the store will pick
  const planted = path.join(store.dir, 'aaaa.so')
  fs.writeFileSync(planted, 'planted')
  const e = await rejectsCode(t, store.snapshot(src), 'ERR_COPY', 'existing file: ERR_COPY') as DlhostError
  t.ok(e instanceof DlhostError)
  t.equal(e.path, path.resolve(src))
  t.match(e.message, /already exists/)
  t.equal(fs.readFileSync(planted, 'utf8'), 'planted', 'the existing file was not touched')
  t.same(store.list(), [], 'not listed')

  // a planted symlink with the next name: not followed
  const victim = path.join(d, 'victim')
  fs.writeFileSync(victim, 'victim')
  fs.symlinkSync(victim, path.join(store.dir, 'bbbb.so'))
  await rejectsCode(t, store.snapshot(src), 'ERR_COPY', 'existing symlink: ERR_COPY')
  t.equal(fs.readFileSync(victim, 'utf8'), 'victim', 'symlink target not written')

  // a dangling symlink is not created-through either
  fs.symlinkSync(path.join(d, 'would-be-created'), path.join(store.dir, 'cccc.so'))
  await rejectsCode(t, store.snapshot(src), 'ERR_COPY', 'dangling symlink: ERR_COPY')
  t.notOk(fs.existsSync(path.join(d, 'would-be-created')), 'nothing created through it')

  // invalid names from the generator are refused
  const bad = await CopyStore.create({ dir: d, randomName: () => '../escape.so' })
  t.teardown(() => bad.close())
  await rejectsCode(t, bad.snapshot(src), 'ERR_COPY', 'name with a slash refused')
  t.notOk(fs.existsSync(path.join(d, 'escape.so')))
})

t.test('snapshot: default names come from crypto.randomBytes', async (t) => {
  // monkeypatch randomBytes to return a fixed value: a collision is an error, not an overwrite
  const fixed = Buffer.alloc(16, 0xab)
  const orig = crypto.randomBytes
  const d = scratch(t)
  const store = await CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const src = path.join(d, 'lib.so')
  fs.writeFileSync(src, 'x')
  const patched = ((n: number) => n === 16 ? Buffer.from(fixed) : orig(n)) as unknown as typeof crypto.randomBytes
  Object.defineProperty(require('crypto'), 'randomBytes', { value: patched, configurable: true, writable: true })
  try {
    const s1 = await store.snapshot(src)
    t.equal(path.basename(s1.path), 'ab'.repeat(16) + '.so', 'name is randomBytes(16) as hex')
    await rejectsCode(t, store.snapshot(src), 'ERR_COPY', 'same name again: O_EXCL refuses')
    t.same(store.list(), [s1.path])
  } finally {
    Object.defineProperty(require('crypto'), 'randomBytes', { value: orig, configurable: true, writable: true })
  }
})

t.test('snapshot: source errors', async (t) => {
  const d = scratch(t)
  const store = await CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const missing = path.join(d, 'nope.so')
  const e1 = await rejectsCode(t, store.snapshot(missing), 'ERR_NOT_FOUND', 'missing') as DlhostError
  t.equal(e1.path, missing)
  await rejectsCode(t, store.snapshot(path.join(d, 'nope', 'x.so')), 'ERR_NOT_FOUND', 'missing directory')
  const e2 = await rejectsCode(t, store.snapshot(d), 'ERR_IS_DIRECTORY', 'directory') as DlhostError
  t.equal(e2.path, d)
  fs.writeFileSync(path.join(d, 'file'), 'x')
  await rejectsCode(t, store.snapshot(path.join(d, 'file', 'x.so')), 'ERR_NOT_FOUND', 'ENOTDIR is not found')
  const fifo = path.join(d, 'fifo')
  execFileSync('mkfifo', [fifo])
  const e3 = await rejectsCode(t, store.snapshot(fifo), 'ERR_NOT_ELF', 'a FIFO is refused, without hanging') as DlhostError
  t.match(e3.message, /not a regular file/)
  t.same(fs.readdirSync(store.dir), [], 'nothing left in the store')

  await t.rejects(store.snapshot(42 as unknown as string), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
  await t.rejects(store.snapshot(''), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
  await t.rejects(store.snapshot('a\0b'), { name: 'RangeError' })
})

t.test('snapshot: unreadable source is ERR_ACCESS', async (t) => {
  const d = scratch(t)
  const src = path.join(d, 'secret.so')
  fs.writeFileSync(src, 'secret')
  fs.chmodSync(src, 0o000)
  if (!isRoot) {
    const store = await CopyStore.create({ dir: d })
    t.teardown(() => store.close())
    const e = await rejectsCode(t, store.snapshot(src), 'ERR_ACCESS', 'EACCES') as DlhostError
    t.equal(e.path, src)
    return
  }
  // root reads anything: simulate the kernel saying EACCES (small files are
  // snapshotted with synchronous I/O)
  const realOpenSync = fs.openSync
  const mocked = t.mockRequire<typeof import('../lib/reload/copies')>('../lib/reload/copies', {
    fs: {
      ...fs,
      openSync: (p: fs.PathLike, flags?: fs.OpenMode, mode?: fs.Mode | null) => {
        if (p === src) throw Object.assign(new Error(`EACCES: permission denied, open '${src}'`), { code: 'EACCES', errno: -13, syscall: 'open', path: src })
        return realOpenSync(p, flags ?? 'r', mode)
      }
    }
  })
  const store = await mocked.CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const e = await rejectsCode(t, store.snapshot(src), 'ERR_ACCESS', 'EACCES') as DlhostError
  t.equal(e.path, src)
  t.match(e.loaderMessage, /EACCES/, 'OS message kept')
})

t.test('snapshot: disk errors and verification failures are ERR_COPY and leave nothing', async (t) => {
  const d = scratch(t)
  const src = path.join(d, 'lib.so')
  fs.writeFileSync(src, crypto.randomBytes(4096))
  const realOpenSync = fs.openSync
  const realReadFileSync = fs.readFileSync
  const realWriteSync = fs.writeSync
  let mode: 'enospc' | 'corrupt' | 'ok' = 'enospc'
  const copyFds = new Set<number>()
  const mocked = t.mockRequire<typeof import('../lib/reload/copies')>('../lib/reload/copies', {
    fs: {
      ...fs,
      openSync: (p: fs.PathLike, flags?: fs.OpenMode, m?: fs.Mode | null) => {
        const fd = realOpenSync(p, flags ?? 'r', m)
        if (typeof p === 'string' && path.dirname(p) !== d) copyFds.add(fd)
        else copyFds.delete(fd)
        return fd
      },
      writeSync: (fd: number, buf: NodeJS.ArrayBufferView, ...rest: Array<number | null | undefined>) => {
        if (mode === 'enospc' && copyFds.has(fd)) {
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' })
        }
        return (realWriteSync as (fd: number, b: NodeJS.ArrayBufferView, ...r: Array<number | null | undefined>) => number)(fd, buf, ...rest)
      },
      readFileSync: (p: fs.PathOrFileDescriptor, o?: unknown) => {
        const buf = realReadFileSync(p, o as { flag?: string }) as Buffer
        if (mode === 'corrupt' && typeof p === 'number' && copyFds.has(p)) {
          const copy = Buffer.from(buf)
          copy[0] ^= 0xff
          return copy
        }
        return buf
      }
    }
  })
  const store = await mocked.CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const e1 = await rejectsCode(t, store.snapshot(src), 'ERR_COPY', 'ENOSPC') as DlhostError
  t.match(e1.loaderMessage, /ENOSPC: no space left on device/, 'the OS message')
  t.equal(e1.path, src)
  t.same(fs.readdirSync(store.dir), [], 'partial copy removed')
  t.same(store.list(), [])

  mode = 'corrupt'
  const e2 = await rejectsCode(t, store.snapshot(src), 'ERR_COPY', 'hash mismatch') as DlhostError
  t.match(e2.message, /does not match/)
  t.same(fs.readdirSync(store.dir), [], 'bad copy removed')

  mode = 'ok'
  const s = await store.snapshot(src)
  t.same(fs.readdirSync(store.dir), [path.basename(s.path)])
})

t.test('remove: only copies of this store; idempotent', async (t) => {
  const d = scratch(t)
  const store = await CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const src = path.join(d, 'lib.so')
  fs.writeFileSync(src, 'x')
  const a = await store.snapshot(src)
  const b = await store.snapshot(src)
  await store.remove(a.path)
  t.notOk(fs.existsSync(a.path), 'removed')
  t.same(store.list(), [b.path])
  await store.remove(a.path)
  t.pass('second remove is fine')
  await t.rejects(store.remove(src), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'outside the store')
  t.ok(fs.existsSync(src), 'outside file untouched')
  await t.rejects(store.remove(path.join(store.dir, 'sub', 'x.so')), { name: 'RangeError' }, 'not directly inside')
  await t.rejects(store.remove(store.dir), { name: 'RangeError' }, 'the store itself')
  await t.rejects(store.remove(path.join(store.dir, '..', 'lib.so')), { name: 'RangeError' }, 'dot-dot escape')
  await t.rejects(store.remove(1 as unknown as string), { name: 'TypeError' })
  await store.close()
  await store.remove(b.path)
  t.pass('remove after close is a no-op')
})

t.test('close: removes everything; idempotent; one exit listener for all stores', async (t) => {
  const d = scratch(t)
  const listenersBefore = process.listenerCount('exit')
  const countBefore = openStoreCount()
  const s1 = await CopyStore.create({ dir: d })
  const s2 = await CopyStore.create({ dir: d })
  const s3 = await CopyStore.create({ dir: d })
  t.equal(openStoreCount(), countBefore + 3)
  t.ok(process.listenerCount('exit') <= listenersBefore + 1, 'at most one listener added for three stores')
  t.ok(process.listenerCount('exit') >= 1)
  const src = path.join(d, 'lib.so')
  fs.writeFileSync(src, 'x')
  await s1.snapshot(src)
  await s1.snapshot(src)
  const c1 = s1.close()
  const c2 = s1.close()
  await Promise.all([c1, c2])
  await s1.close()
  t.notOk(fs.existsSync(s1.dir), 'directory removed')
  t.ok(s1.closed)
  t.same(s1.list(), [])
  t.equal(openStoreCount(), countBefore + 2, 'unregistered')
  await rejectsCode(t, s1.snapshot(src), 'ERR_CLOSED', 'snapshot after close')
  s2.closeSync()
  s2.closeSync()
  t.notOk(fs.existsSync(s2.dir))
  await s2.close()
  t.pass('close after closeSync is fine')
  await s3.close()
  t.equal(openStoreCount(), countBefore)
  if (countBefore === 0) t.equal(process.listenerCount('exit'), listenersBefore, 'listener removed with the last store')
})

t.test('close while a snapshot is in flight', async (t) => {
  const d = scratch(t)
  const store = await CopyStore.create({ dir: d })
  const src = path.join(d, 'big.so')
  fs.writeFileSync(src, crypto.randomBytes(8 << 20))
  const p = store.snapshot(src)
  const c = store.close()
  const r = await p.then((v) => ({ ok: true as const, v }), (e: unknown) => ({ ok: false as const, e }))
  await c
  if (r.ok) t.pass('snapshot finished before close')
  else t.equal((r.e as { code?: string }).code, 'ERR_CLOSED', 'or was told the store closed')
  t.notOk(fs.existsSync(store.dir), 'nothing left either way')
})

t.test('snapshot with deferSync: verified copy at once, fsync settles later; close waits for it', async (t) => {
  const d = scratch(t)
  const store = await CopyStore.create({ dir: d })
  const src = path.join(d, 'lib.so')
  const content = crypto.randomBytes(50_000)
  fs.writeFileSync(src, content)
  const snaps = await Promise.all([1, 2, 3].map(() => store.snapshot(src, { deferSync: true })))
  for (const snap of snaps) {
    t.ok(fs.readFileSync(snap.path).equals(content), 'the copy is complete and verified before its fsync settled')
    t.equal(snap.sha256, sha(content))
  }
  await t.resolves(Promise.all(snaps.map(s => s.synced)), 'every fsync settles')
  const plain = await store.snapshot(src)
  await t.resolves(plain.synced, 'without deferSync, synced is settled already')
  await store.remove(snaps[0].path) // removing a copy whose fsync ran is fine
  const late = await store.snapshot(src, { deferSync: true })
  await store.close() // does not leave the fsync (and its descriptor) behind
  await t.resolves(late.synced)
  t.notOk(fs.existsSync(store.dir))
  await t.rejects(store.snapshot(src, null as unknown as {}), { name: 'TypeError' }, 'options must be an object')
})

t.test('read() then copy(): the bytes read once are what is copied, whatever the file does meanwhile', async (t) => {
  const d = scratch(t)
  const store = await CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const src = path.join(d, 'lib.so')
  const v1 = crypto.randomBytes(20_000)
  fs.writeFileSync(src, v1)
  const read = await store.read(src)
  t.equal(read.path, src)
  t.ok(read.bytes.equals(v1))
  t.equal(read.sha256, sha(v1))
  t.equal(read.sourceStat.size, v1.length)
  t.equal(read.sourceStat.ino, fs.statSync(src).ino)
  t.same(store.list(), [], 'reading makes no copy')
  fs.writeFileSync(src, crypto.randomBytes(30_000)) // the file moves on
  const snap = await store.copy(read)
  t.ok(fs.readFileSync(snap.path).equals(v1), 'the copy holds what was read')
  t.equal(snap.sha256, read.sha256)
  const st = fs.statSync(snap.path, { bigint: true })
  t.equal(snap.copyStat.ino, st.ino, 'copyStat is the copy\'s own stat')
  t.equal(snap.copyStat.mtimeNs, st.mtimeNs)
  t.equal(snap.copyStat.size, BigInt(v1.length))
  const twice = await store.copy(read)
  t.not(twice.path, snap.path, 'each copy() is a new private file')
  await t.rejects(store.copy({ bytes: 'x' } as unknown as Parameters<CopyStore['copy']>[0]), { name: 'TypeError' })
  await t.rejects(store.read(path.join(d, 'missing.so')), { code: 'ERR_NOT_FOUND' })
  await t.rejects(store.read(d), { code: 'ERR_IS_DIRECTORY' })
  await t.rejects(store.read(''), { name: 'RangeError' })
  await store.close()
  await t.rejects(store.read(src), { code: 'ERR_CLOSED' })
  await t.rejects(store.copy(read), { code: 'ERR_CLOSED' })
})

t.test('process exit removes every open store', async (t) => {
  const d = scratch(t)
  const src = path.join(d, 'lib.so')
  fs.writeFileSync(src, 'library bytes')
  const mod = JSON.stringify(path.join(root, 'lib', 'reload', 'copies.ts'))
  const cases: Array<[string, string]> = [
    ['natural exit', ''],
    ['process.exit(3)', 'process.exit(3)'],
    ['uncaught exception', 'throw new Error("boom")']
  ]
  for (const [name, ending] of cases) {
    const script = path.join(d, `child-${cases.findIndex((c) => c[0] === name)}.js`)
    fs.writeFileSync(script, `
      const { CopyStore } = require(${mod})
      ;(async () => {
        await new Promise((resolve) => setImmediate(resolve)) // the entry module has finished loading
        const before = process.listenerCount('exit')
        const a = await CopyStore.create({ dir: ${JSON.stringify(d)} })
        const b = await CopyStore.create({ dir: ${JSON.stringify(d)} })
        const s = await a.snapshot(${JSON.stringify(src)})
        await b.snapshot(${JSON.stringify(src)})
        console.log(JSON.stringify({ dirs: [a.dir, b.dir], copy: s.path, exitListeners: process.listenerCount('exit') - before }))
        ${ending}
      })()
    `)
    const r = await runChild(script)
    const line = r.stdout.trim().split('\n').find((l) => l.startsWith('{'))
    t.ok(line, `${name}: child reported its stores (stderr: ${r.stderr.slice(0, 500)})`)
    if (line === undefined) continue
    const info = JSON.parse(line) as { dirs: string[], copy: string, exitListeners: number }
    t.equal(info.exitListeners, 1, `${name}: one exit listener for two stores`)
    for (const dir of info.dirs) t.notOk(fs.existsSync(dir), `${name}: ${dir} removed at exit`)
    t.notOk(fs.existsSync(info.copy), `${name}: copy removed`)
    if (name === 'process.exit(3)') t.equal(r.code, 3)
    if (name === 'natural exit') t.equal(r.code, 0)
    if (name === 'uncaught exception') t.not(r.code, 0)
  }
  t.same(fs.readdirSync(d).filter((n) => n.startsWith('dlhost-')), [], 'no store left behind')
})

t.test('snapshot: a big library (over the sync limit) goes through the threadpool, same result', async (t) => {
  const d = scratch(t)
  const src = path.join(d, 'big.so')
  const bytes = crypto.randomBytes(SYNC_SNAPSHOT_LIMIT + 12345)
  fs.writeFileSync(src, bytes)
  const store = await CopyStore.create({ dir: d })
  t.teardown(() => store.close())
  const snap = await store.snapshot(src)
  t.equal(snap.size, bytes.length)
  t.equal(snap.sha256, crypto.createHash('sha256').update(bytes).digest('hex'))
  t.ok(fs.readFileSync(snap.path).equals(bytes), 'the copy is byte-exact')
  t.equal(fs.statSync(snap.path).mode & 0o777, 0o700)
})
