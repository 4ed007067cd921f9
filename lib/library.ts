/**
 * Level 1: refcounted libraries. `open()` validates in TypeScript (coded
 * errors for missing, unreadable, non-ELF and foreign files), then asks the
 * native registry, which shares one dlopen handle per identity and dlcloses
 * an unpinned library when its last reference goes. JS thread only.
 */
import { createHash } from 'crypto'
import fs from 'fs'
import { binding, C, NativeIdentity, NativeLibrary, NativeRow } from './binding'
import { ElfInfo, parseElf } from './elf'
import { DlhostError, errnoError, fromNative, typeError } from './errors'
import { checkKeys, checkPath } from './options'
import { checkHostCompatible, stuckReason } from './rules'
import { checkTrusted, checkTrustOption, Trust } from './trust'

export interface OpenOptions {
  /** Never dlclose (default true, as in lua-resty-ffi). Once pinned, stays pinned. */
  pin?: boolean
  /** RTLD_GLOBAL instead of RTLD_LOCAL (lua-resty-ffi's is_global). */
  global?: boolean
  /** RTLD_LAZY instead of RTLD_NOW. */
  lazy?: boolean
  /** Whose files may be loaded (default: this process's uid and root; see trust.ts). */
  trust?: Trust
  /**
   * @internal What the caller already read, hashed and parsed of exactly
   * this file, a private copy nobody else can replace (the reload layer's
   * 0700 store): open() then does not read it a second time.
   */
  known?: KnownContent
}

/** Every key of OpenOptions: an unknown key is refused (see options.ts). */
const OPEN_KEYS: Record<keyof OpenOptions, true> = { pin: true, global: true, lazy: true, trust: true, known: true }

/** @internal A file's content facts, computed by whoever read it. */
export interface KnownContent {
  sha256: string
  elf: ElfInfo
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

/**
 * @internal An identity left the process (dlclosed, verified unmapped):
 * its facts go, so a host that loads build after build keeps no memory of
 * each. Seq numbers per path stay (they count the contents a path had).
 */
export function forgetIdentity (id: { realPath: string, key: string }): void {
  factsByIdentity.delete(identityKey(id))
}

/** @internal A path that will never be loaded again (a private copy that was removed): its seq numbers go too. */
export function forgetPath (realPath: string): void {
  contentsByPath.delete(realPath)
}

/** The facts cache's key: the real path and the native side's identity key. */
function identityKey (id: { realPath: string, key: string }): string {
  return `${id.realPath}\0${id.key}`
}

function seqFor (realPath: string, sha256: string): number {
  let list = contentsByPath.get(realPath)
  if (list === undefined) contentsByPath.set(realPath, list = [])
  let i = list.indexOf(sha256)
  if (i < 0) i = list.push(sha256) - 1
  return i + 1
}

/**
 * Facts of one identity: read, hashed and parsed once (or handed over by the
 * caller who did). The bytes are read through a descriptor whose fstat must
 * be that identity; null when the path names another file by now.
 */
function factsFor (path: string, id: NativeIdentity, known: KnownContent | undefined): Facts | null {
  const k = identityKey(id)
  let f = factsByIdentity.get(k)
  if (f !== undefined) return f
  let sha256: string
  let elf: ElfInfo
  if (known !== undefined) {
    ({ sha256, elf } = known) // parsed and checked by the caller
  } else {
    const bytes = readIdentity(path, id)
    if (bytes === null) return null
    elf = parseElf(bytes, path)
    checkHostCompatible(elf, path)
    sha256 = createHash('sha256').update(bytes).digest('hex')
  }
  f = { elf, version: { sha256, seq: seqFor(id.realPath, sha256), dev: id.dev, ino: id.ino, size: id.size, mtimeMs: id.mtimeMs } }
  factsByIdentity.set(k, f)
  return f
}

/** The content of `path` if it is still the file `id` says, else null. */
function readIdentity (path: string, id: NativeIdentity): Buffer | null {
  let fd: number
  try { fd = fs.openSync(path, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0)) } catch (err) { throw errnoError(err, path) }
  try {
    const st = fs.fstatSync(fd, { bigint: true })
    if (Number(st.dev) !== id.dev || Number(st.ino) !== id.ino || Number(st.size) !== id.size || st.mtimeNs !== id.mtimeNs) return null
    return fs.readFileSync(fd)
  } catch (err) {
    throw errnoError(err, path)
  } finally {
    fs.closeSync(fd)
  }
}

function stuckOf (row: NativeRow): string | null {
  return stuckReason(row, factsByIdentity.get(identityKey(row))?.elf)
}

export function rowOf (n: NativeRow): LibraryRow {
  const facts = factsByIdentity.get(identityKey(n))
  return {
    path: n.realPath,
    version: facts?.version ?? null,
    refs: n.refs,
    pinned: n.pinned,
    runtimes: n.runtimes,
    mapped: n.mapped,
    stuck: stuckOf(n)
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
  /** @internal The parsed ELF facts of what was opened. */
  readonly elf: ElfInfo
  #released = false

  /** @internal use open() */
  constructor (path: string, native: NativeLibrary, facts: Facts) {
    this.path = path
    this.realPath = native.realPath
    this.native = native
    this.version = facts.version
    this.elf = facts.elf
  }

  /** The registry's count for this identity, shared by every Library object of it. */
  get refs (): number { return this.native.state().refs }
  get pinned (): boolean { return this.native.state().pinned }
  /** Is the object in the process now? Measured (dl_iterate_phdr by path), not assumed. */
  get mapped (): boolean { return isMapped(this.realPath) }
  /** null, or why the library stayed mapped after its last release (NODELETE, GNU_UNIQUE, …). */
  get stuck (): string | null { return stuckOf(this.native.state()) }

  get released (): boolean { return this.#released }

  /** Does the library export `symbol`? Throws ERR_RELEASED after release(). */
  has (symbol: string): boolean {
    if (typeof symbol !== 'string') throw typeError('symbol must be a string')
    if (symbol.includes('\0')) throw typeError('symbol must not contain NUL bytes')
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
    const r = this.native.release()
    if (r !== null && r.dlclosed && !r.mapped) forgetIdentity(this.native)
  }

  toJSON (): LibraryRow { return rowOf(this.native.state()) }
}

function checkBool (name: string, v: unknown): boolean | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'boolean') throw typeError(`options.${name} must be a boolean`)
  return v
}

/** @internal Is an object loaded from exactly this path in the process? Asked of the loader (dl_iterate_phdr). */
export function isMapped (path: string): boolean {
  return binding.isMapped(path)
}

/** Opens (or shares) a library and returns a new reference to it. Synchronous. */
export function open (path: string, options: OpenOptions = {}): Library {
  checkPath(path)
  checkKeys(options, OPEN_KEYS, 'open() options')
  const pin = checkBool('pin', options.pin) ?? true
  const global = checkBool('global', options.global) ?? false
  const lazy = checkBool('lazy', options.lazy) ?? false
  const trust = checkTrustOption(options.trust)
  // Validate before dlopen: the loader's messages for these are vague, and a
  // foreign or truncated file deserves its own code. Each identity is read
  // and hashed once, and the facts are those of the file dlopen mapped (the
  // native side checks the mapping's inode; here the bytes are read through
  // a descriptor of that identity). Content the caller knows was validated
  // by the caller.
  const known = options.known
  if (known === undefined) checkTrusted(path, trust)
  // Known content is a private copy of the reload layer's 0700 store.
  const flags = (pin ? C.OPEN_PIN : 0) | (global ? C.OPEN_GLOBAL : 0) | (lazy ? C.OPEN_LAZY : 0) | (known !== undefined ? C.OPEN_PRIVATE : 0)
  for (let attempt = 0; attempt < 3; attempt++) {
    if (known === undefined) {
      let id: NativeIdentity
      try { id = binding.identify(path) } catch (err) { throw fromNative(err, path) }
      if (factsFor(path, id, undefined) === null) continue // replaced meanwhile
    }
    let native: NativeLibrary
    try {
      native = new binding.Library(path, flags)
    } catch (err) { throw staleHint(fromNative(err, path)) }
    // Normally the same identity; if the file changed in between, the facts of what was mapped.
    const facts = factsFor(path, native, known)
    if (facts !== null) return new Library(path, native, facts)
    native.release()
  }
  throw new DlhostError('ERR_STALE_PATH', `${path} kept changing while it was opened; try again once it is stable`, { path })
}

/**
 * ERR_STALE_PATH (the file was replaced while its previous version is
 * mapped) with the way out that applies to that previous version: a pinned
 * one never leaves, so "release it" would be advice nobody can follow.
 */
function staleHint (err: unknown): unknown {
  if (!(err instanceof DlhostError) || err.code !== 'ERR_STALE_PATH' || err.path === undefined || !err.message.includes('was replaced')) return err
  let real: string
  try { real = fs.realpathSync.native(err.path) } catch { return err }
  const rows = libraries().filter(r => r.path === real)
  const fresh = 'load the new build from a new path, or use reloadable(), which loads private copies'
  let hint: string
  if (rows.some(r => r.pinned)) {
    hint = `the previous version is pinned (open() and load() pin by default) and stays mapped until the process exits: ${fresh}; ` +
      'to replace a file in place, open or load it with { pin: false } and release every reference first'
  } else if (rows.some(r => r.refs > 0)) {
    const refs = rows.reduce((n, r) => n + r.refs, 0)
    hint = `release the previous version's ${refs} reference(s) first (Library.release(), Runtime.unload()), or ${fresh}`
  } else if (rows.some(r => r.stuck !== null)) {
    hint = `the previous version cannot leave the process (${String(rows.find(r => r.stuck !== null)?.stuck)}): ${fresh}`
  } else {
    hint = `the previous version was loaded outside dlhost's registry (by another addon or a plugin): ${fresh}`
  }
  return new DlhostError('ERR_STALE_PATH', `${err.message}; ${hint}`, { path: err.path, reason: hint })
}

/** A snapshot of the registry, for tools and dashboards. */
export function libraries (): LibraryRow[] {
  return binding.libraries().map(rowOf)
}
