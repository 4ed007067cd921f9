/**
 * Level 1: refcounted libraries. `open()` validates in TypeScript (coded
 * errors for missing, unreadable, non-ELF and foreign files), then asks the
 * native registry, which shares one dlopen handle per identity and dlcloses
 * an unpinned library when its last reference goes. JS thread only.
 */
import { createHash } from 'crypto'
import fs from 'fs'
import { binding, NativeLibrary, NativeRow, OPEN_GLOBAL, OPEN_LAZY, OPEN_PIN } from './binding'
import { checkHostCompatible, ElfInfo, parseElf, stuckReasons } from './elf'
import { DlhostError, fromNative, typeError } from './errors'

export interface OpenOptions {
  /** Never dlclose (default true, as in lua-resty-ffi). Once pinned, stays pinned. */
  pin?: boolean
  /** RTLD_GLOBAL instead of RTLD_LOCAL (lua-resty-ffi's is_global). */
  global?: boolean
  /** RTLD_LAZY instead of RTLD_NOW. */
  lazy?: boolean
}

/** What a loaded library is: the content and the file it came from. */
export interface LibraryVersion {
  /** sha256 of the content, hex. */
  sha256: string
  /** 1, 2, 3…: grows by one per distinct content seen at this real path. */
  seq: number
  dev: number
  ino: number
  size: number
  mtimeMs: number
}

/** One row of `libraries()`. */
export interface LibraryRow {
  path: string
  version: LibraryVersion | null
  refs: number
  pinned: boolean
  runtimes: number
  mapped: boolean
  /** null, or why the library could not leave the process. */
  stuck: string | null
}

interface Facts {
  version: LibraryVersion
  elf: ElfInfo
}

// Per environment (module state is per worker): facts are computed once per
// identity; seq numbers are handed out per real path and content.
const factsByIdentity = new Map<string, Facts>()
const contentsByPath = new Map<string, string[]>()
/** Rows whose runtime left plugin threads behind: never unmapped, say why. */
export const threadStuck = new Map<number, string>()

function identityKey (realPath: string, key: string): string {
  return `${realPath}\0${key}`
}

/** Maps an fs error to a coded DlhostError. */
export function fsError (err: unknown, path: string): unknown {
  const code = (err as NodeJS.ErrnoException)?.code
  const msg = (err as Error)?.message ?? String(err)
  if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return new DlhostError('ERR_NOT_FOUND', `no such library: ${path}`, { path, loaderMessage: msg })
  if (code === 'EACCES' || code === 'EPERM') return new DlhostError('ERR_ACCESS', `cannot read ${path}`, { path, loaderMessage: msg })
  if (code === 'EISDIR') return new DlhostError('ERR_IS_DIRECTORY', `${path} is a directory`, { path })
  return err
}

function seqFor (realPath: string, sha256: string): number {
  let list = contentsByPath.get(realPath)
  if (list === undefined) contentsByPath.set(realPath, list = [])
  let i = list.indexOf(sha256)
  if (i < 0) i = list.push(sha256) - 1
  return i + 1
}

/** Reads the file once: sha256, ELF facts, and a check that this process can load it. */
function readFacts (path: string, realPath: string, st: { dev: number, ino: number, size: number, mtimeMs: number }): Facts {
  let bytes: Buffer
  try { bytes = fs.readFileSync(path) } catch (err) { throw fsError(err, path) }
  const elf = parseElf(bytes, path)
  checkHostCompatible(elf, path)
  const sha256 = createHash('sha256').update(bytes).digest('hex')
  return {
    elf,
    version: { sha256, seq: seqFor(realPath, sha256), dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs }
  }
}

/** Facts for an identity the native registry reported (cached). */
function factsFor (path: string, n: { realPath: string, key: string, dev: number, ino: number, size: number, mtimeMs: number }): Facts {
  const id = identityKey(n.realPath, n.key)
  let f = factsByIdentity.get(id)
  if (f === undefined) {
    f = readFacts(path, n.realPath, n)
    factsByIdentity.set(id, f)
  }
  return f
}

/**
 * @internal The reload layer already read, hashed and parsed a private copy
 * (at `realPath`, whose fstat is `st`): record those facts so open() does not
 * read the file a second time.
 */
export function seedFacts (realPath: string, st: fs.BigIntStats, sha256: string, elf: ElfInfo): void {
  const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`
  const id = identityKey(realPath, key)
  if (factsByIdentity.has(id)) return
  checkHostCompatible(elf, realPath)
  factsByIdentity.set(id, {
    elf,
    version: { sha256, seq: seqFor(realPath, sha256), dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeMs: Number(st.mtimeNs) / 1e6 }
  })
}

export function factsOfRow (row: NativeRow): Facts | undefined {
  return factsByIdentity.get(identityKey(row.realPath, row.key))
}

function stuckOf (row: NativeRow, facts: Facts | undefined): string | null {
  const t = threadStuck.get(row.serial)
  if (t !== undefined && row.mapped) return t
  if (!row.dlclosed || !row.mapped) return null
  const reasons = facts ? stuckReasons(facts.elf) : []
  return reasons[0] ?? 'still mapped (another object depends on it, or it was loaded outside dlhost)'
}

export function rowOf (n: NativeRow): LibraryRow {
  const facts = factsOfRow(n)
  return {
    path: n.realPath,
    version: facts?.version ?? null,
    refs: n.refs,
    pinned: n.pinned,
    runtimes: n.runtimes,
    mapped: n.mapped,
    stuck: stuckOf(n, facts)
  }
}

/** A reference to a loaded library. Hold it while you use the library; release() when done. */
export class Library {
  /** The path as given to open(). */
  readonly path: string
  /** The canonical path (symlinks resolved): part of the identity. */
  readonly realPath: string
  readonly version: LibraryVersion
  /** @internal */
  readonly native: NativeLibrary
  #released = false

  /** @internal use open() */
  constructor (path: string, native: NativeLibrary, facts: Facts) {
    this.path = path
    this.realPath = native.realPath
    this.native = native
    this.version = facts.version
  }

  /** The registry's count for this identity, shared by every Library object of it. */
  get refs (): number { return this.native.state().refs }
  get pinned (): boolean { return this.native.state().pinned }
  /** Is the object in the process now? Measured (dl_iterate_phdr by path), not assumed. */
  get mapped (): boolean { return binding.isMapped(this.realPath) }
  /** null, or why the library stayed mapped after its last release (NODELETE, GNU_UNIQUE, …). */
  get stuck (): string | null {
    const row = this.native.state()
    return stuckOf(row, factsOfRow(row))
  }

  get released (): boolean { return this.#released }

  /** Does the library export `symbol`? Throws ERR_RELEASED after release(). */
  has (symbol: string): boolean {
    if (typeof symbol !== 'string') throw typeError('symbol must be a string')
    try { return this.native.has(symbol) } catch (err) { throw fromNative(err, this.path) }
  }

  /** Pins the library for the rest of the process's life. */
  pin (): void {
    try { this.native.pin() } catch (err) { throw fromNative(err, this.path) }
  }

  /** Drops this reference (idempotent). The last release of an unpinned library dlcloses it. */
  release (): void {
    if (this.#released) return
    this.#released = true
    this.native.release()
  }

  toJSON (): LibraryRow { return rowOf(this.native.state()) }
}

function checkBool (name: string, v: unknown): boolean | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'boolean') throw typeError(`options.${name} must be a boolean`)
  return v
}

/** Opens (or shares) a library and returns a new reference to it. Synchronous. */
export function open (path: string, options: OpenOptions = {}): Library {
  if (typeof path !== 'string') throw typeError('path must be a string')
  if (path.length === 0 || path.includes('\0')) throw typeError('path must be a non-empty string without NUL bytes')
  if (options === null || typeof options !== 'object') throw typeError('options must be an object')
  const pin = checkBool('pin', options.pin) ?? true
  const global = checkBool('global', options.global) ?? false
  const lazy = checkBool('lazy', options.lazy) ?? false
  let st: fs.BigIntStats
  let realPath: string
  try {
    st = fs.statSync(path, { bigint: true })
    realPath = fs.realpathSync.native(path) // one syscall, not an lstat per component
  } catch (err) { throw fsError(err, path) }
  if (st.isDirectory()) throw new DlhostError('ERR_IS_DIRECTORY', `${path} is a directory`, { path })
  if (!st.isFile()) throw new DlhostError('ERR_NOT_ELF', `${path} is not a regular file`, { path })
  // Validate before dlopen: the loader's messages for these are vague, and a
  // foreign or truncated file deserves its own code. Same key format as the
  // native registry's, so each identity is read and hashed once.
  const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`
  factsFor(path, { realPath, key, dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeMs: Number(st.mtimeNs) / 1e6 })
  let native: NativeLibrary
  const flags = (pin ? OPEN_PIN : 0) | (global ? OPEN_GLOBAL : 0) | (lazy ? OPEN_LAZY : 0)
  try {
    native = new binding.Library(path, flags)
  } catch (err) { throw fromNative(err, path) }
  // Normally the same identity; if the file changed in between, read what dlopen mapped.
  const facts = factsFor(path, native)
  return new Library(path, native, facts)
}

/** A snapshot of the registry, for tools and dashboards. */
export function libraries (): LibraryRow[] {
  return binding.libraries().map(rowOf)
}
