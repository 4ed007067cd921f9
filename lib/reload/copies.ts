/**
 * Private copies of library versions.
 *
 * glibc's dlopen() hands back the handle it already has for a path (or for a
 * dev/inode it already mapped), even after the file was replaced, and
 * overwriting a mapped `.so` in place (`cp`, `fs.writeFile`) makes the process
 * die of SIGBUS/SIGSEGV the next time it touches a page of it. So every
 * version of a reloadable library is loaded from a private copy, never from
 * the user's file: the user may then rewrite their file any way they like.
 *
 * A `CopyStore` is a directory of the process's own (0700, owned by us, made
 * with mkdtemp under a parent that nobody else can tamper with). Each copy has
 * an unpredictable name, is created with O_EXCL|O_NOFOLLOW, is fsync'ed, and
 * is verified by hash after it is written. Stores still open when the process
 * exits are removed synchronously by one shared `process.on('exit')` listener.
 */
import * as crypto from 'crypto'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { debuglog, promisify } from 'util'
import { binding } from '../binding'
import { DlhostError, errnoError, notRegularError, rangeError, typeError } from '../errors'

const debug = debuglog('dlhost')

/** A source file read once (`read()`): its bytes, their hash and the stat they belong to. */
export interface SourceBytes {
  /** Absolute path of the file that was read. */
  path: string
  /** The content. */
  bytes: Buffer
  /** Hex sha256 of `bytes`. */
  sha256: string
  /** fstat() of the descriptor the bytes were read from, taken after reading (size and mtime unchanged since before). */
  sourceStat: fs.Stats
}

/** A private copy (made by `copy()` or `snapshot()`): its path and the bytes it holds. */
export interface PrivateCopy {
  /** Absolute path of the private copy (inside `store.dir`). */
  path: string
  /** Hex sha256 of the content (of what was read, verified on what was written). */
  sha256: string
  /** Size in bytes. */
  size: number
  /** The content, as read once from the source. */
  bytes: Buffer
  /** fstat() of the copy once written (its identity for the library registry). */
  copyStat: fs.BigIntStats
  /**
   * fstat() of the source file taken on the descriptor the bytes were read
   * from: pass it to `LibraryWatcher.markCurrent()` to say "this is loaded".
   */
  sourceStat: fs.Stats
  /**
   * Settles when the copy's fsync has: at once unless `snapshot()` was asked
   * to `deferSync`. Rejects with ERR_COPY if the fsync failed.
   */
  synced: Promise<void>
}

export interface CopyStoreOptions {
  /** Parent directory of the store (default `os.tmpdir()`). */
  dir?: string
  /**
   * @internal Name generator for copies (tests). Must return a plain file
   * name. Default: 16 random bytes as hex + `.so`.
   */
  randomName?: () => string
  /** Largest source read, in bytes (default MAX_BUILD_BYTES). */
  maxBuildBytes?: number
}

const O_NOFOLLOW = fs.constants.O_NOFOLLOW ?? 0
const O_DIRECTORY = fs.constants.O_DIRECTORY ?? 0
const O_NONBLOCK = fs.constants.O_NONBLOCK ?? 0

function uid (): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined
}

function errCode (err: unknown): string | undefined {
  const c = (err as { code?: unknown } | null)?.code
  return typeof c === 'string' ? c : undefined
}

function errMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Hex sha256 of the bytes. */
export function sha256 (buf: Buffer): string {
  return crypto.createHash('sha256').update(buf).digest('hex')
}

function defaultName (): string {
  return crypto.randomBytes(16).toString('hex') + '.so'
}

/** Errors met while reading the user's file, mapped to stable codes (anything unusual: ERR_COPY). */
function sourceError (err: unknown, srcPath: string): DlhostError {
  return errnoError(err, srcPath, 'ERR_COPY')
}

/**
 * The parent of a store must be a real directory that nobody but us (or
 * root) can rename entries in: otherwise someone could move our fresh store
 * away and put a directory of theirs (or a symlink) in its place, and the
 * library we dlopen would be theirs. Checked on the resolved path and every
 * ancestor of it, as sshd's StrictModes does: each must be owned by us or
 * root, and if group/other may write to it, it must be sticky.
 */
function checkParentChain (realParent: string, me: number): void {
  let p = realParent
  for (;;) {
    const st = fs.lstatSync(p)
    if (st.isSymbolicLink()) {
      throw new DlhostError('ERR_COPY', `refusing to create a copy store: ${p} is a symbolic link`, { path: realParent })
    }
    if (!st.isDirectory()) {
      throw new DlhostError('ERR_COPY', `refusing to create a copy store: ${p} is not a directory`, { path: realParent })
    }
    if (st.uid !== me && st.uid !== 0) {
      throw new DlhostError('ERR_COPY',
        `refusing to create a copy store under ${realParent}: ${p} is owned by uid ${st.uid}, not by us (${me}) or root`,
        { path: realParent })
    }
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
      throw new DlhostError('ERR_COPY',
        `refusing to create a copy store under ${realParent}: ${p} is writable by others and not sticky (mode ${(st.mode & 0o7777).toString(8)})`,
        { path: realParent })
    }
    const up = path.dirname(p)
    if (up === p) return
    p = up
  }
}

// ─── process-exit cleanup: one listener for every open store ──────────────

const openStores = new Set<CopyStore>()
let exitListening = false

function onExit (): void {
  for (const store of [...openStores]) store.closeSync()
}

function register (store: CopyStore): void {
  binding.trackDir(store.dir, true) // a terminated worker's environment removes it
  openStores.add(store)
  if (!exitListening) {
    process.on('exit', onExit)
    exitListening = true
  }
}

function unregister (store: CopyStore): void {
  binding.trackDir(store.dir, false)
  openStores.delete(store)
  if (openStores.size === 0 && exitListening) {
    process.removeListener('exit', onExit)
    exitListening = false
  }
}

// ─── owners: stores of processes that died without cleaning up ────────────
//
// SIGKILL, or a signal whose default action ends the process, skips every
// clean-up (dlhost installs no signal handler: the application's own signal
// behaviour is its own). Each store records its owner (pid and process start
// time, so a reused pid is not mistaken for it) in its name; the first store
// a process makes under a parent removes the stores there whose owner is
// dead, and only those: never a live process's, never one named otherwise,
// never one owned by another uid.

// A store's name records its owner: dlhost-<pid>.<start time>-XXXXXX.
const STORE_NAME = /^dlhost-(\d+)\.(\d+)-[A-Za-z0-9]{6}$/

/** The start time of process `pid` (clock ticks since boot), or null when there is none. */
function startTime (pid: number | 'self'): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name, which may contain spaces and parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null
  } catch {
    return null
  }
}

let prefix: string | undefined
function storePrefix (): string {
  prefix ??= `dlhost-${process.pid}.${startTime('self') ?? '0'}-`
  return prefix
}

const swept = new Set<string>()

/** Once per parent per process: removes the stores whose owner died. Never throws. */
async function sweepOnce (parent: string, me: number | undefined): Promise<void> {
  if (swept.has(parent) || me === undefined) return
  swept.add(parent)
  let names: string[]
  try { names = await fs.promises.readdir(parent) } catch { return }
  for (const name of names) {
    const m = STORE_NAME.exec(name)
    if (m === null) continue
    const pid = Number(m[1])
    if (startTime(pid) === m[2]) continue // its owner lives
    const dir = path.join(parent, name)
    try {
      const st = await fs.promises.lstat(dir)
      if (!st.isDirectory() || st.uid !== me) continue
      await fs.promises.rm(dir, { recursive: true, force: true })
      debug('removed copy store %s of dead process %d', dir, pid)
    } catch {
      // Gone already, or not ours to remove.
    }
  }
}

/** @internal For tests: how many stores the exit listener would remove. */
export function openStoreCount (): number {
  return openStores.size
}

/**
 * The file operations of a snapshot, synchronous or on the threadpool. A
 * typical plugin is small: its dozen operations cost ~0.1 ms synchronously
 * but a threadpool round trip each (~1 ms in all) asynchronously, which is
 * most of a reload. Big files go async so the event loop is never blocked
 * for long.
 */
interface SnapshotIo {
  kind: 'sync' | 'async'
  open (p: string, flags: number, mode: number): Promise<number>
  fstat (fd: number): Promise<fs.Stats>
  readAll (fd: number, size: number): Promise<Buffer>
  writeAll (fd: number, buf: Buffer): Promise<void>
  fchmod (fd: number, mode: number): Promise<void>
  close (fd: number): Promise<void>
  readFile (p: string, flags: number): Promise<Buffer>
}

/**
 * Largest build read and copied: 512 MiB by default. A bigger file is
 * refused with ERR_BUILD_TOO_LARGE before it is read into memory (the
 * watcher reports it the same way).
 */
export const MAX_BUILD_BYTES = 512 * 1024 * 1024

/** Files up to this size are snapshotted with synchronous I/O. */
export const SYNC_SNAPSHOT_LIMIT = 4 * 1024 * 1024

const syncIo: SnapshotIo = {
  kind: 'sync',
  open: async (p, flags, mode) => fs.openSync(p, flags, mode),
  fstat: async fd => fs.fstatSync(fd),
  readAll: async (fd, size) => readAllSync(fd, size),
  writeAll: async (fd, buf) => { let off = 0; while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off) },
  fchmod: async (fd, mode) => fs.fchmodSync(fd, mode),
  close: async fd => fs.closeSync(fd),
  readFile: async (p, flags) => {
    const fd = fs.openSync(p, flags)
    try { return fs.readFileSync(fd) } finally { fs.closeSync(fd) }
  }
}

function readAllSync (fd: number, size: number): Buffer {
  // Read to EOF (the file may have grown since fstat: the caller re-checks).
  const chunks: Buffer[] = []
  let buf = Buffer.allocUnsafe(Math.max(size, 1) + 1)
  let len = 0
  for (;;) {
    if (len === buf.length) { chunks.push(buf); buf = Buffer.allocUnsafe(buf.length); len = 0 }
    const n = fs.readSync(fd, buf, len, buf.length - len, null)
    if (n === 0) break
    len += n
  }
  chunks.push(buf.subarray(0, len))
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)
}

const asyncIo: SnapshotIo = {
  kind: 'async',
  open: promisify(fs.open) as (p: string, flags: number, mode: number) => Promise<number>,
  fstat: promisify(fs.fstat) as (fd: number) => Promise<fs.Stats>,
  readAll: async fd => await promisify(fs.readFile)(fd),
  writeAll: async (fd, buf) => { await promisify(fs.writeFile)(fd, buf) },
  fchmod: promisify(fs.fchmod),
  close: promisify(fs.close),
  readFile: async (p, flags) => {
    const fh = await fs.promises.open(p, flags)
    try { return await fh.readFile() } finally { await fh.close() }
  }
}

function pickIo (srcPath: string): SnapshotIo {
  try {
    return fs.statSync(srcPath).size <= SYNC_SNAPSHOT_LIMIT ? syncIo : asyncIo
  } catch {
    return syncIo // the open below reports the error with its code
  }
}

/** A private 0700 directory holding copies of library versions. */
export class CopyStore {
  readonly #dir: string
  readonly #name: () => string
  readonly #maxBytes: number
  readonly #copies = new Set<string>()
  readonly #pending = new Set<Promise<unknown>>()
  #closed = false
  #closing: Promise<void> | null = null

  private constructor (dir: string, name: () => string, maxBytes: number) {
    this.#dir = dir
    this.#name = name
    this.#maxBytes = maxBytes
    register(this)
  }

  /**
   * Make a new store: `mkdtemp(<parent>/dlhost-XXXXXX)`, chmod 0700 on the
   * opened directory, and verify (on the descriptor and on the path) that it
   * is a real directory owned by us with mode 0700. ERR_COPY when the parent
   * is a trap (a symlink or a directory others could tamper with) or the
   * result is not what we made; ERR_NOT_FOUND / ERR_ACCESS when the parent is
   * missing / not writable.
   */
  static async create (opts: CopyStoreOptions = {}): Promise<CopyStore> {
    if (opts === null || typeof opts !== 'object') throw typeError('CopyStore.create(opts): opts must be an object')
    if (opts.dir !== undefined && (typeof opts.dir !== 'string' || opts.dir === '')) {
      throw typeError('CopyStore.create(opts): opts.dir must be a non-empty string')
    }
    if (opts.randomName !== undefined && typeof opts.randomName !== 'function') {
      throw typeError('CopyStore.create(opts): opts.randomName must be a function')
    }
    const parent = path.resolve(opts.dir ?? os.tmpdir())
    const me = uid()

    let realParent: string
    try {
      // A symlinked parent (macOS /tmp, a symlinked $TMPDIR) is resolved once;
      // from here on only the resolved path is used, and it is checked.
      realParent = await fs.promises.realpath(parent)
    } catch (err) {
      throw errnoError(err, parent, 'ERR_COPY')
    }
    if (parent !== realParent) {
      // The symlink itself must be ours or root's (the kernel's
      // protected_symlinks rule): a link planted by someone else is a trap.
      const lst = await fs.promises.lstat(parent)
      if (me !== undefined && lst.isSymbolicLink() && lst.uid !== me && lst.uid !== 0) {
        throw new DlhostError('ERR_COPY',
          `refusing to create a copy store: ${parent} is a symbolic link owned by uid ${lst.uid}`, { path: parent })
      }
    }
    if (me !== undefined) checkParentChain(realParent, me)

    let dir: string
    try {
      dir = await fs.promises.mkdtemp(path.join(realParent, storePrefix()))
    } catch (err) {
      throw errnoError(err, realParent, 'ERR_COPY')
    }

    try {
      const fh = await fs.promises.open(dir, fs.constants.O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
      try {
        await fh.chmod(0o700)
        const st = await fh.stat()
        const lst = await fs.promises.lstat(dir)
        if (!st.isDirectory() || lst.isSymbolicLink() || st.ino !== lst.ino || st.dev !== lst.dev) {
          throw new DlhostError('ERR_COPY', `copy store ${dir} was replaced while it was being created`, { path: dir })
        }
        if (me !== undefined && st.uid !== me) {
          throw new DlhostError('ERR_COPY', `copy store ${dir} is owned by uid ${st.uid}, not by us (${me})`, { path: dir })
        }
        if ((st.mode & 0o7777) !== 0o700) {
          throw new DlhostError('ERR_COPY', `copy store ${dir} has mode ${(st.mode & 0o7777).toString(8)}, not 700`, { path: dir })
        }
      } finally {
        await fh.close()
      }
    } catch (err) {
      // Only rmdir: if it is not the empty directory we made, leave it alone.
      await fs.promises.rmdir(dir).catch(() => {})
      if (err instanceof DlhostError) throw err
      throw new DlhostError('ERR_COPY', `cannot secure copy store ${dir}: ${errMessage(err)}`,
        { path: dir, loaderMessage: errMessage(err), cause: err })
    }
    await sweepOnce(realParent, me)
    debug('copy store %s created', dir)
    return new CopyStore(dir, opts.randomName ?? defaultName, opts.maxBuildBytes ?? MAX_BUILD_BYTES)
  }

  /** Absolute path of the store's directory. */
  get dir (): string {
    return this.#dir
  }

  /** Has the store been closed (its directory removed)? */
  get closed (): boolean {
    return this.#closed
  }

  /** The copies this store made and has not removed, oldest first. */
  list (): string[] {
    return [...this.#copies]
  }

  /**
   * Copy `srcPath` into the store: `read()` then `copy()`. The source is read
   * once; the hash is of those bytes, they are written to a new file (random
   * name, O_EXCL, O_NOFOLLOW, mode 0700), fsync'ed, and the copy is read back
   * and verified.
   */
  async snapshot (srcPath: string, options: { deferSync?: boolean } = {}): Promise<PrivateCopy> {
    if (options === null || typeof options !== 'object') throw typeError('snapshot(path, options): options must be an object')
    return await this.copy(await this.read(srcPath), options)
  }

  /**
   * Read a source file once (synchronously when small, see
   * SYNC_SNAPSHOT_LIMIT), hash it, and say which stat the bytes belong to.
   * A file that changes while it is read is ERR_COPY; a missing, unreadable
   * or non-regular file has its own code.
   */
  async read (srcPath: string): Promise<SourceBytes> {
    if (typeof srcPath !== 'string') throw typeError('read(path): path must be a string')
    if (srcPath === '' || srcPath.includes('\0')) throw rangeError('read(path): path must be a non-empty string without NUL bytes')
    this.#assertOpen(srcPath)
    return await this.#track(this.#read(path.resolve(srcPath)))
  }

  /**
   * Write `src`'s bytes to a new private copy (random name, O_EXCL,
   * O_NOFOLLOW, mode 0700), fsync it and verify it by reading it back. With
   * `deferSync` the returned snapshot's `synced` settles when the fsync has
   * (it runs on the threadpool meanwhile); otherwise it already has.
   */
  async copy (src: SourceBytes, options: { deferSync?: boolean } = {}): Promise<PrivateCopy> {
    if (src === null || typeof src !== 'object' || !Buffer.isBuffer(src.bytes) || typeof src.sha256 !== 'string' || typeof src.path !== 'string') {
      throw typeError('copy(src): src must be what read() returned')
    }
    if (options === null || typeof options !== 'object') throw typeError('copy(src, options): options must be an object')
    this.#assertOpen(src.path)
    const snap = await this.#track(this.#copy(src))
    if (options.deferSync !== true) await snap.synced
    return snap
  }

  /** close() waits for what is in flight. */
  async #track<T> (p: Promise<T>): Promise<T> {
    this.#pending.add(p)
    try {
      return await p
    } finally {
      this.#pending.delete(p)
    }
  }

  async #read (srcPath: string): Promise<SourceBytes> {
    const io = pickIo(srcPath)
    let bytes: Buffer
    let sourceStat: fs.Stats
    let src: number
    try {
      // O_NONBLOCK so that a FIFO does not hang the open; it is rejected below.
      src = await io.open(srcPath, fs.constants.O_RDONLY | O_NONBLOCK, 0)
    } catch (err) {
      throw sourceError(err, srcPath)
    }
    try {
      const before = await io.fstat(src)
      if (before.isDirectory()) throw sourceError(Object.assign(new Error('is a directory'), { code: 'EISDIR' }), srcPath)
      if (!before.isFile()) throw notRegularError(srcPath)
      if (before.size > this.#maxBytes) {
        throw new DlhostError('ERR_BUILD_TOO_LARGE', `${srcPath}: ${before.size} bytes, more than the ${this.#maxBytes} a build may have (maxBuildBytes)`,
          { path: srcPath, reason: 'too large' })
      }
      bytes = await io.readAll(src, before.size)
      sourceStat = await io.fstat(src)
      if (sourceStat.size !== bytes.length || sourceStat.mtimeMs !== before.mtimeMs || sourceStat.size !== before.size) {
        throw new DlhostError('ERR_COPY', `${srcPath} changed while it was being read`,
          { path: srcPath, reason: 'source changed while being read' })
      }
    } catch (err) {
      if (err instanceof DlhostError) throw err
      throw sourceError(err, srcPath)
    } finally {
      await io.close(src).catch(() => {})
    }
    return { path: srcPath, bytes, sha256: sha256(bytes), sourceStat }
  }

  async #copy (src: SourceBytes): Promise<PrivateCopy> {
    const { path: srcPath, bytes, sha256: digest, sourceStat } = src
    const io = bytes.length <= SYNC_SNAPSHOT_LIMIT ? syncIo : asyncIo
    const name = this.#name()
    if (typeof name !== 'string' || name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
      throw new DlhostError('ERR_COPY', `invalid copy name ${JSON.stringify(name)}`, { path: srcPath })
    }
    this.#assertOpen(srcPath)
    const copyPath = path.join(this.#dir, name)
    let created = false
    let synced: Promise<void> | undefined
    let copyStat: fs.BigIntStats | undefined
    try {
      const out = await io.open(copyPath,
        fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | O_NOFOLLOW, 0o700)
      created = true
      this.#copies.add(copyPath)
      let owned = true
      try {
        await io.fchmod(out, 0o700) // whatever the umask; dlopen needs read
        await io.writeAll(out, bytes)
        copyStat = fs.fstatSync(out, { bigint: true })
        // The fsync runs on the threadpool while the copy is verified (and,
        // with deferSync, loaded): it is the slowest step (~0.3 ms on disk)
        // and nothing before the swap needs it done. It owns `out` now.
        synced = this.#fsyncAndClose(out, copyPath, srcPath)
        owned = false
      } finally {
        if (owned) await io.close(out)
      }
      // ── verify what landed on disk ──
      const back = await io.readFile(copyPath, fs.constants.O_RDONLY | O_NOFOLLOW)
      const got = sha256(back)
      if (got !== digest || back.length !== bytes.length) {
        throw new DlhostError('ERR_COPY',
          `copy of ${srcPath} does not match what was read (sha256 ${got} != ${digest})`,
          { path: srcPath, reason: 'verification failed' })
      }
    } catch (err) {
      if (created) {
        this.#copies.delete(copyPath)
        await fs.promises.unlink(copyPath).catch(() => {})
      }
      if (err instanceof DlhostError) throw err
      const code = errCode(err)
      const why = code === 'EEXIST' ? `a file named ${name} already exists in the store` : errMessage(err)
      if (this.#closed) throw this.#closedError(srcPath)
      throw new DlhostError('ERR_COPY', `cannot copy ${srcPath} to ${copyPath}: ${why}`,
        { path: srcPath, loaderMessage: errMessage(err), cause: err })
    }
    if (this.#closed) {
      this.#copies.delete(copyPath)
      await fs.promises.unlink(copyPath).catch(() => {})
      throw this.#closedError(srcPath)
    }
    debug('copied %s -> %s (%d bytes, sha256 %s, %s io)', srcPath, copyPath, bytes.length, digest, io.kind)
    return { path: copyPath, sha256: digest, size: bytes.length, bytes, copyStat: copyStat as fs.BigIntStats, sourceStat, synced: synced as Promise<void> }
  }

  /**
   * Delete one copy. Only files directly inside the store are accepted (a
   * RangeError otherwise). Idempotent: a copy already gone is fine, and so is
   * any call after `close()`.
   */
  async remove (copyPath: string): Promise<void> {
    if (typeof copyPath !== 'string') throw typeError('remove(path): path must be a string')
    const abs = path.resolve(copyPath)
    if (path.dirname(abs) !== this.#dir || path.basename(abs) === '' || copyPath.includes('\0')) {
      throw rangeError(`remove(path): ${copyPath} is not a copy in this store (${this.#dir})`)
    }
    this.#copies.delete(abs)
    if (this.#closed) return
    try {
      await fs.promises.unlink(abs)
    } catch (err) {
      const code = errCode(err)
      if (code === 'ENOENT') return
      throw new DlhostError('ERR_COPY', `cannot remove copy ${abs}: ${errMessage(err)}`,
        { path: abs, loaderMessage: errMessage(err), cause: err })
    }
  }

  #fsyncAndClose (fd: number, copyPath: string, srcPath: string): Promise<void> {
    const p = new Promise<void>((resolve, reject) => {
      fs.fsync(fd, err => {
        // close() of a file just fsync'd is a few µs: not worth a second
        // threadpool round trip while a reload waits for this.
        try { fs.closeSync(fd) } catch {}
        if (err === null) resolve()
        else {
          reject(new DlhostError('ERR_COPY', `cannot fsync the copy ${copyPath} of ${srcPath}: ${errMessage(err)}`,
            { path: srcPath, loaderMessage: errMessage(err), cause: err }))
        }
      })
    })
    // close() waits for it; a caller that never awaits it sees no unhandled rejection.
    const settled = p.then(() => {}, () => {})
    this.#pending.add(settled)
    void settled.then(() => this.#pending.delete(settled))
    return p
  }

  /** Remove the store's directory and everything in it. Idempotent. */
  async close (): Promise<void> {
    if (this.#closing !== null) return await this.#closing
    this.#closed = true
    this.#closing = (async () => {
      // Let snapshots in flight finish (they see #closed and clean up).
      await Promise.allSettled([...this.#pending])
      try {
        await fs.promises.rm(this.#dir, { recursive: true, force: true, maxRetries: 3 })
      } catch (err) {
        // Still registered: the exit listener tries again.
        throw new DlhostError('ERR_COPY', `cannot remove copy store ${this.#dir}: ${errMessage(err)}`,
          { path: this.#dir, loaderMessage: errMessage(err), cause: err })
      }
      this.#copies.clear()
      unregister(this)
      debug('copy store %s removed', this.#dir)
    })()
    return await this.#closing
  }

  /**
   * Remove the store synchronously (for process exit). Best effort, never
   * throws; idempotent.
   */
  closeSync (): void {
    this.#closed = true
    if (this.#closing === null) this.#closing = Promise.resolve()
    try {
      fs.rmSync(this.#dir, { recursive: true, force: true, maxRetries: 3 })
      this.#copies.clear()
      unregister(this)
    } catch (err) {
      debug('cannot remove copy store %s: %s', this.#dir, errMessage(err))
    }
  }

  #assertOpen (p: string): void {
    if (this.#closed) throw this.#closedError(p)
  }

  #closedError (p: string): DlhostError {
    return new DlhostError('ERR_CLOSED', `copy store ${this.#dir} is closed`, { path: p })
  }
}
