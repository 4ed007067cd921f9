/**
 * Preparing a build while the file settles. When the watcher says a settle
 * period started, read, hash, copy (write, fsync, verify) and parse the file
 * now, and dlopen it too when the host allows, so that once the file has
 * settled only the swap is left. At most one copy is in the making and one
 * is ready; a newer settle period while one is in the making runs after it;
 * a superseded copy is released and removed. JS thread only.
 */
import diagnostics from 'diagnostics_channel'
import { debuglog } from 'util'
import { elfCompleteness } from '../elf'
import { forgetPath, Library, open } from '../library'
import { Abi } from '../rules'
import { Build, parseBuild } from './build'
import { CopyStore } from './copies'

const debug = debuglog('dlhost')
const prepareChannel = diagnostics.channel('dlhost:prepare')

/** A build copied while the file settled, waiting for the reload that takes it. */
export interface Prepared {
  build: Build
  /** It passed a probe load while it settled. */
  probed: boolean
  /** The copy dlopen'ed already (the host allowed it), or null. */
  lib: Library | null
}

/** What the preparer asks of the plugin it works for. */
export interface PreparerHost {
  readonly path: string
  readonly store: CopyStore
  readonly entry: Abi | undefined
  readonly global: boolean | undefined
  /** sha256 of the version serving now. */
  servingSha256 (): string
  /** Throws unless the source may be trusted (trust.ts). */
  checkSource (): void
  /** A probe load of the build (removes the copy and throws when it fails), or null: none. */
  probe: ((build: Build) => Promise<void>) | null
  /** May a build with these facts be dlopen'ed before its turn (its constructors run)? */
  mayPreload (build: Build): boolean
  closed (): boolean
}

export class Preparer {
  readonly #host: PreparerHost
  #prepared: Prepared | null = null
  #preparing: Promise<void> | null = null
  #again = false

  constructor (host: PreparerHost) {
    this.#host = host
  }

  /** A settle period started: prepare what the file holds now. Never throws. */
  settling (): void {
    if (this.#host.closed()) return
    if (this.#preparing !== null) { this.#again = true; return }
    this.#preparing = (async () => {
      do {
        this.#again = false
        try {
          await this.#prepareOnce()
        } catch (err) {
          debug('prepare %s: %s', this.#host.path, (err as Error)?.message)
        }
      } while (this.#again && !this.#host.closed())
    })().finally(() => { this.#preparing = null })
  }

  /** Is this the content of the build prepared (and parsed) while it settled? */
  isPrepared (buf: Buffer): boolean {
    return this.#prepared !== null && this.#prepared.build.copy.bytes.equals(buf)
  }

  /** The build prepared for this content (once the one in the making is done), or null; any other is discarded. */
  async take (bytes: Buffer): Promise<Prepared | null> {
    if (this.#preparing !== null) await this.#preparing
    const p = this.#prepared
    if (p === null) return null
    this.#prepared = null
    if (p.build.copy.bytes.equals(bytes)) return p
    this.discard(p)
    return null
  }

  /** Releases a prepared build and removes its copy (after its fsync). */
  discard (p: Prepared): void {
    p.lib?.release()
    const { store } = this.#host
    forgetPath(p.build.copy.path)
    void p.build.copy.synced.catch(() => {}).then(async () => await store.remove(p.build.copy.path)).catch(() => {})
  }

  /** Waits for the copy in the making and discards what is prepared. */
  async close (): Promise<void> {
    await this.#preparing
    if (this.#prepared !== null) this.discard(this.#prepared)
    this.#prepared = null
  }

  async #prepareOnce (): Promise<void> {
    const { path, store } = this.#host
    this.#host.checkSource()
    const src = await store.read(path)
    if (src.sha256 === this.#host.servingSha256() || src.sha256 === this.#prepared?.build.copy.sha256) return
    if (!elfCompleteness(src.bytes).complete) return
    const copy = await store.copy(src, { deferSync: true })
    const build = parseBuild(store, copy, path, this.#host.entry)
    if (this.#host.probe !== null) await this.#host.probe(build)
    let lib: Library | null = null
    if (this.#host.mayPreload(build)) {
      try {
        lib = open(copy.path, { pin: false, global: this.#host.global, known: { sha256: copy.sha256, elf: build.elf } })
      } catch (err) {
        await store.remove(copy.path).catch(() => {})
        throw err
      }
    }
    copy.synced.catch(() => {}) // the reload that takes it sees the error
    if (this.#prepared !== null) this.discard(this.#prepared)
    const p: Prepared = { build, lib, probed: this.#host.probe !== null }
    this.#prepared = null
    if (this.#host.closed()) { this.discard(p); return }
    this.#prepared = p
    debug('prepared %s: %s%s', path, copy.sha256, lib !== null ? ' (loaded)' : '')
    if (prepareChannel.hasSubscribers) prepareChannel.publish({ path, sha256: copy.sha256, copy: copy.path, loaded: lib !== null })
  }
}
