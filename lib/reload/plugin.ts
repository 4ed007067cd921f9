/**
 * Level 3: versioned, reloadable plugins. A Plugin orchestrates versions:
 * every version runs from a private copy (copies.ts) as its own Level 2
 * runtime; a watcher (watch.ts) says when a rebuilt file has settled and a
 * Preparer (prepare.ts) copies it meanwhile; a reload takes the checked
 * build (build.ts), swaps it in ('shadow' side by side, or 'drain' one at a
 * time) and rolls back on any failure. JS thread only.
 */
import diagnostics from 'diagnostics_channel'
import fs from 'fs'
import { resolve as resolvePath } from 'path'
import { debuglog } from 'util'
import { C } from '../binding'
import { elfCompleteness, ElfInfo } from '../elf'
import { asDlhostError, callSites, DlhostError, rangeError, typeError, withCallSite } from '../errors'
import { emitSafely, onAbort, TypedEmitter } from '../events'
import { forgetPath, isMapped, Library } from '../library'
import { probe } from '../isolate/probe'
import type { IsolatedRuntime } from '../isolate/runtime'
import { checkLimits, Limits } from '../isolate/host'
import { Abi, autoStrategy, EXPLAIN, coexistFatal, languageRuntime, reloadStrategy, stateEntries, STATE_EXPORT, STATE_IMPORT, stuckReasons, STILL_MAPPED, threadsStuckReason, unloadBlockers } from '../rules'
import { callSignal, callTimeout, CallOptions, Cfg, frozenCfg, load, Runtime } from '../runtime'
import { checkKeys, checkPath } from '../options'
import { checkTrusted, checkTrustOption, Trust } from '../trust'
import { Build, checkSameAbi, parseBuild } from './build'
import { StreamOptions, streamOptions } from '../stream'
import { CallMetrics, Counts, metricsBetween, Snapshot, snapshot } from '../metrics'
import { countGoesToCanary, judge, keyPoint, Rollout, rolloutOf, RolloutOptions } from './rollout'
import { CopyStore, PrivateCopy, sha256, SourceBytes } from './copies'
import { Prepared, Preparer } from './prepare'
import { ChangeEvent, LibraryWatcher, statKey } from './watch'

const debug = debuglog('dlhost')
const reloadChannel = diagnostics.channel('dlhost:reload')
const rolloutChannel = diagnostics.channel('dlhost:rollout')
const errorChannel = diagnostics.channel('dlhost:error')

export type Strategy = 'auto' | 'shadow' | 'drain'

export interface WatchOptions {
  /** Poll every `poll` ms instead of directory events. */
  poll?: number
  /** Extra files (e.g. a config) whose change reloads the same library. */
  files?: string[]
}

const WATCH_KEYS: Record<keyof WatchOptions, true> = { poll: true, files: true }

export interface ReloadableOptions {
  strategy?: Strategy
  /** Watch the file (default true); an object tunes how. */
  watch?: boolean | WatchOptions
  /** How long size and mtime must stay unchanged before a build counts (default 50 ms). */
  settleMs?: number
  /** Pin versions (default false: an old version must be dlclosed to leave). */
  pin?: boolean
  global?: boolean
  /** Per version, and the bound on calls held during a drain (default 65536). */
  maxQueue?: number
  /** Parent of the private 0700 copy directory (default os.tmpdir()). */
  copyDir?: string
  /**
   * What to do while a watched change settles (default 'load'): 'copy'
   * makes the private copy (write, fsync, verify, parse); 'load' also
   * dlopens it (its constructors run) when the swap will be side by side
   * and the build can be unloaded again; 'off' waits for the file to settle.
   */
  prepare?: 'load' | 'copy' | 'off'
  /**
   * A watched file that settles and stays incomplete or not ELF this long
   * is reported ('error': ERR_INCOMPLETE / ERR_NOT_ELF) while the old
   * version serves on (default max(1000, 4 × settleMs) ms).
   */
  badBuildMs?: number
  /** Largest build read and copied, in bytes (default 512 MiB): ERR_BUILD_TOO_LARGE beyond. */
  maxBuildBytes?: number
  /** Whose builds may be loaded (default: this process's uid and root; checked on every new build; see trust.ts). */
  trust?: Trust
  /**
   * When a new build can only be taken by a new process (the serving version
   * can neither coexist with a second copy nor unload: NODELETE, GNU_UNIQUE,
   * Go): 'error' (default) reports ERR_STUCK and keeps serving; 'restart'
   * holds new calls, lets the serving version answer its calls, emits
   * 'restart' and exits the process with code 3, which `dlhost supervise`
   * (or any supervisor told so) answers by starting it again.
   */
  onStuck?: 'error' | 'restart'
  /**
   * 'process': every version lives in a child process (docs/isolation.md):
   * side by side across processes, unloaded by ending the child; reloads
   * what can never leave a process. Default ('auto' strategy): isolated for
   * a library that can never leave the process in place (NODELETE,
   * GNU_UNIQUE, Go) or that links a one-per-process language runtime.
   */
  isolate?: 'process' | false
  /** Resource limits of each isolated version's child. */
  limits?: Limits
  /**
   * Probe each new build first: dlopen and init it in a throwaway child
   * process; a build that crashes there is a bad build (ERR_PROBE_FAILED)
   * and never reaches this process. Runs while the file settles when it is
   * watched. Default false.
   */
  probe?: boolean
  entry?: Abi
  unloadTimeoutMs?: number
  /**
   * A state for the first version's dlhost_state_import (bytes written by
   * plugin.exportState(), say): reloadable() rejects with
   * ERR_STATE_REJECTED when the plugin refuses it or has no such entry.
   */
  initialState?: Uint8Array
  /**
   * When a new version refuses the state the serving one handed over (its
   * dlhost_state_import rc != 0, or it has none): 'rollback' (default) keeps
   * the old version serving with its state, and reports ERR_STATE_REJECTED;
   * 'fresh' lets the new version serve without it (still reported).
   */
  stateRejected?: 'rollback' | 'fresh'
  /**
   * Canary reloads (docs/rollout.md): a new build first takes a share of
   * the calls beside the stable version, is compared with it over the same
   * window, and is promoted or rolled back on its own. Needs two versions
   * side by side (in process, or isolated).
   */
  rollout?: RolloutOptions
  /** Count call latencies per version (default true; see LoadOptions.metrics). */
  metrics?: boolean
}

/** Every key of ReloadableOptions: an unknown key is refused (see options.ts). */
const RELOADABLE_KEYS: Record<keyof ReloadableOptions, true> = {
  strategy: true, watch: true, settleMs: true, pin: true, global: true, maxQueue: true, copyDir: true, prepare: true, badBuildMs: true, maxBuildBytes: true, trust: true, onStuck: true, isolate: true, limits: true, probe: true, entry: true, unloadTimeoutMs: true, initialState: true, stateRejected: true, rollout: true, metrics: true
}

/** A version of the plugin: a content (sha256), numbered in order of appearance. */
export interface PluginVersion {
  seq: number
  sha256: string
  /** The private copy it was loaded from. */
  copy: string
  loadedAt: number
}

export interface VersionState extends PluginVersion {
  state: 'serving' | 'draining'
  inFlight: number
}

export interface ReloadEvent {
  from: PluginVersion
  to: PluginVersion
  /** From the file settled (a watched change) or the reload() call, to the new version serving. */
  ms: number
  strategy: 'shadow' | 'drain'
  /** The new version's private copy was made (written, fsync'd, verified, parsed) while the file settled. */
  prepared: boolean
  /** Present when the old version handed its state over (it exports dlhost_state_export). */
  state?: StateHandover
}

/** A state hand-over at a reload. */
export interface StateHandover {
  /** Bytes the old version exported. */
  bytes: number
  /** The new version took them (false: it refused them and stateRejected is 'fresh'). */
  imported: boolean
  /**
   * Calls were held this long, from holding new calls to letting them flow
   * to the new version: the old version's drain, its export and the new
   * version's import.
   */
  pauseMs: number
  /** The part of pauseMs spent waiting for the old version's calls in flight. */
  drainMs: number
}
export interface DrainedEvent { version: PluginVersion }
/** A canary's end: 'promote' (it serves every call now) or 'rollback' (it left). */
export interface RolloutEvent {
  /** The stable version. */
  from: PluginVersion
  /** The canary. */
  to: PluginVersion
  /** Why: the rule that rolled it back, or that it passed. */
  reason: string
  /** 'metrics' (minCalls reached), 'maxMs', or 'manual' (promote() / rollback()). */
  decidedBy: 'metrics' | 'maxMs' | 'manual'
  /** Both versions over the same window: from the canary's start to the decision. */
  stable: CallMetrics
  canary: CallMetrics
  /** From minCalls reached (or maxMs, or the manual call) to the decision acted on. */
  decisionMs: number
}
export interface RestartEvent { version: PluginVersion, reason: string, exitCode: 3 }
export interface StuckEvent { version: PluginVersion, reason: string }

/**
 * Plugin's events and their listener arguments: `plugin.on('reload', ev => …)`
 * types `ev` as ReloadEvent, and a listener of the wrong shape fails to compile.
 */
export interface PluginEvents {
  reload: [ReloadEvent]
  drained: [DrainedEvent]
  restart: [RestartEvent]
  stuck: [StuckEvent]
  /** A bad build or a watcher problem; the serving version keeps serving. */
  error: [DlhostError]
  /** A dlhost_emit of a version's plugin, with the version (seq) that sent it. */
  message: [Buffer, { seq: number }]
  /** A canary passed: it serves every call now ('reload' follows). */
  promote: [RolloutEvent]
  /** A canary failed (or rollback() was called): it left; its bytes are not tried again until the file changes. */
  rollback: [RolloutEvent]
}

/** One version's metrics (plugin.metrics()). */
export interface VersionMetrics {
  version: PluginVersion
  role: 'serving' | 'stable' | 'canary' | 'draining'
  /** Over the version's life. */
  life: CallMetrics
  /** Over about the last 10 s. */
  window: CallMetrics
}

interface Version extends PluginVersion {
  runtime: Runtime | IsolatedRuntime
  elf: ElfInfo
  abi: Abi
  /** Its state hand-over entries (rules.ts stateEntries). */
  hands: { exports: boolean, imports: boolean }
  /** Its calls' outcomes, and snapshots of them (one a second, the last ~10 s). */
  counts: Counts
  snaps: Snapshot[]
  inFlight: number
  state: 'serving' | 'draining' | 'gone'
  idle: (() => void) | null
  /** performance.now() when it started taking new calls. */
  servingSince: number
  /** Set once: the version's unload, shared by retire, drain and close. */
  leaving: Promise<boolean> | null
}

interface Held {
  req: string | Uint8Array
  opts: CallOptions | undefined
  resolve: (r: { response: Buffer, seq: number }) => void
  reject: (e: unknown) => void
  /** Stops watching the call's signal and timeout while held. */
  stop: (() => void) | null
  /** performance.now() when it was held: a timeout counts from the call. */
  since: number
}

export class Plugin extends TypedEmitter<PluginEvents> {
  readonly path: string
  readonly strategy: Strategy
  #cfg: Buffer
  #opts: ReloadableOptions
  #store: CopyStore
  #preparer: Preparer
  #watcher: LibraryWatcher | null = null
  #current!: Version
  #versions: Version[] = []
  #seqs = new Map<string, number>()
  #held: Held[] | null = null
  #chain: Promise<void> = Promise.resolve()
  #queuedReload: Promise<void> | null = null
  #closing: Promise<void> | null = null
  #reloads = 0
  // The newest settled change, for the (possibly coalesced) reload that takes it.
  #change: ChangeEvent | null = null
  // Every version in its own child process (decided once, at start).
  #isolated = false
  #rollout: Rollout | null
  #canary: Canary | null = null
  // Calls routed while a canary runs (deterministic routing by count).
  #routed = 0
  // The sha256 of builds rolled back: not tried again until the file changes.
  #rolledBack = new Set<string>()
  // One snapshot of every version's metrics a second (unref'd): windows.
  #ticker: NodeJS.Timeout | null = null

  /** @internal use reloadable() */
  constructor (path: string, cfg: Buffer, opts: ReloadableOptions, store: CopyStore) {
    super()
    this.path = path
    this.#cfg = cfg
    this.#opts = opts
    this.strategy = opts.strategy ?? 'auto'
    this.#rollout = rolloutOf(opts.rollout)
    this.#store = store
    this.#preparer = new Preparer({
      path,
      store,
      entry: opts.entry,
      global: opts.global,
      servingSha256: () => this.#current.sha256,
      checkSource: () => checkTrusted(path, opts.trust),
      probe: opts.probe === true ? async build => await this.#probe(build) : null,
      mayPreload: build => this.#mayPreload(build),
      closed: () => this.#closing !== null
    })
    // Versions' messages are forwarded only while someone listens here (a
    // runtime with a listener keeps the event loop alive).
    const sync = (name: string | symbol): void => { if (name === 'message') queueMicrotask(() => this.#forwardMessages()) }
    this.on('newListener' as 'error', sync as unknown as (e: DlhostError) => void)
    this.on('removeListener' as 'error', sync as unknown as (e: DlhostError) => void)
  }

  #forwarding = new Map<Version, (b: Buffer) => void>()

  #forwardMessages (): void {
    const want = this.listenerCount('message') > 0
    for (const v of this.#versions) {
      const f = this.#forwarding.get(v)
      if (want && f === undefined && v.state !== 'gone') {
        const fn = (b: Buffer): void => { emitSafely(this, 'message', b, { seq: v.seq }) }
        this.#forwarding.set(v, fn)
        ;(v.runtime as Runtime).on('message', fn)
      } else if (f !== undefined && (!want || v.state === 'gone')) {
        this.#forwarding.delete(v)
        ;(v.runtime as Runtime).off('message', f)
      }
    }
    for (const [v, f] of this.#forwarding) {
      if (!this.#versions.includes(v)) { this.#forwarding.delete(v); (v.runtime as Runtime).off('message', f) }
    }
  }

  /** @internal */
  async start (): Promise<void> {
    checkTrusted(this.path, this.#opts.trust)
    const copy = await this.#store.snapshot(this.path)
    const build = parseBuild(this.#store, copy, this.path, this.#opts.entry)
    // 'auto' isolates what can never leave the process in place, and what
    // links a one-per-process language runtime (in a child, two versions run
    // side by side); isolate: false keeps them here (restart / drain).
    this.#isolated = this.#opts.isolate === 'process' ||
      (this.#opts.isolate === undefined && this.strategy === 'auto' && (autoStrategy(build.elf) === 'restart' || languageRuntime(build.elf) !== null))
    if (this.#opts.probe === true) await this.#probe(build)
    if (!this.#isolated) warnUnreloadable(this.path, build.elf, this.strategy)
    const fatal = coexistFatal(build.elf)[0]
    if (this.strategy === 'shadow' && fatal !== undefined && !this.#isolated) {
      await this.#removeCopy(copy.path).catch(() => {})
      throw cannotCoexist(this.path, fatal)
    }
    if (this.#rollout !== null) this.#checkCanaryable(build.elf, stateEntries(build.elf, build.abi).exports)
    this.#current = await this.#loadVersion(build)
    this.#current.state = 'serving'
    this.#ticker = setInterval(() => this.#tick(), 1000)
    this.#ticker.unref()
    if (this.#opts.initialState !== undefined) {
      const v = this.#current
      const err = await this.#importInto(v, this.#opts.initialState)
      if (err !== null) {
        await this.#unloadVersion(v, true).catch(() => {})
        throw err
      }
    }
    const w = this.#opts.watch ?? true
    if (w !== false) {
      const wo: WatchOptions = typeof w === 'object' ? w : {}
      const watcher = new LibraryWatcher(this.path, {
        settleMs: this.#opts.settleMs ?? C.DEFAULT_SETTLE_MS,
        poll: wo.poll ?? false,
        files: wo.files,
        badBuildMs: this.#opts.badBuildMs,
        maxBuildBytes: this.#opts.maxBuildBytes,
        // The content prepared while it settled parsed whole already.
        isComplete: buf => this.#preparer.isPrepared(buf) || elfCompleteness(buf).complete
      })
      watcher.markCurrent(copy.sourceStat)
      if (this.#opts.prepare !== 'off') watcher.on('settling', () => this.#preparer.settling())
      watcher.on('change', ev => {
        debug('change %s (%s: %s)', this.path, ev.reason, ev.trigger)
        if (ev.reason === 'library') this.#change = ev
        this.#requestReload(ev.reason === 'file').catch(() => {})
      })
      watcher.on('error', err => this.#fail(err))
      this.#watcher = watcher.start()
    }
  }

  /** The version serving new calls now. */
  get version (): PluginVersion { return publicVersion(this.#current) }

  /** Live versions (the serving one and any still draining), with in-flight counts. */
  get versions (): VersionState[] {
    return this.#versions.filter(v => v.state !== 'gone').map(v => ({ ...publicVersion(v), state: v.state as 'serving' | 'draining', inFlight: v.inFlight }))
  }

  get reloads (): number { return this.#reloads }

  /** Sends a request to the current version. */
  call (req: string | Uint8Array, opts?: CallOptions): Promise<Buffer> {
    const p = this.#callVersioned(req, opts).then(r => r.response)
    return callSites ? withCallSite(p, this.call) : p
  }

  /** Like call(), and says which version (seq) answered. */
  callVersioned (req: string | Uint8Array, opts?: CallOptions): Promise<{ response: Buffer, seq: number }> {
    return callSites ? withCallSite(this.#callVersioned(req, opts), this.callVersioned) : this.#callVersioned(req, opts)
  }

  #callVersioned (req: string | Uint8Array, opts?: CallOptions): Promise<{ response: Buffer, seq: number }> {
    if (typeof req !== 'string' && !(req instanceof Uint8Array)) return Promise.reject(typeError('request must be a string or a Uint8Array'))
    if (this.#closing !== null) return Promise.reject(new DlhostError('ERR_CLOSED', 'the plugin is closed', { path: this.path }))
    if (this.#held !== null) {
      // A drain is in progress: hold the call, in order, bounded.
      if (this.#held.length >= (this.#opts.maxQueue ?? C.DEFAULT_MAX_QUEUE)) {
        return Promise.reject(new DlhostError('ERR_QUEUE_FULL', 'too many calls held during a drain reload', { path: this.path }))
      }
      let signal: AbortSignal | undefined
      let timeoutMs: number | undefined
      try {
        signal = callSignal(opts)
        timeoutMs = callTimeout(opts)
      } catch (err) { return Promise.reject(err) }
      if (signal?.aborted === true) return Promise.reject(new DlhostError('ERR_ABORTED', 'the call was aborted', { path: this.path, cause: signal.reason }))
      return new Promise((resolve, reject) => {
        const h: Held = { req, opts, resolve, reject, stop: null, since: performance.now() }
        // An abort or a timeout while held: out of the line at once, never sent.
        const out = (err: DlhostError): void => {
          const i = this.#held?.indexOf(h) ?? -1
          if (i < 0) return
          this.#held?.splice(i, 1)
          h.stop?.()
          reject(err)
        }
        const stops: Array<() => void> = []
        if (signal !== undefined) stops.push(onAbort(signal, () => out(new DlhostError('ERR_ABORTED', 'the call was aborted', { path: this.path, cause: signal.reason }))))
        if (timeoutMs !== undefined) {
          const timer = setTimeout(() => out(new DlhostError('ERR_TIMEOUT', `no answer within ${timeoutMs} ms`, { path: this.path })), timeoutMs)
          stops.push(() => clearTimeout(timer))
        }
        if (stops.length > 0) h.stop = () => { for (const f of stops) f() }
        this.#held?.push(h)
      })
    }
    const c = this.#canary
    if (c !== null && !c.deciding) return this.#route(c, req, opts)
    return this.#dispatch(this.#current, req, opts)
  }

  #dispatch (v: Version, req: string | Uint8Array, opts: CallOptions | undefined): Promise<{ response: Buffer, seq: number }> {
    v.inFlight++
    return v.runtime.call(req, opts).then(response => {
      v.counts.ok++
      if (--v.inFlight === 0 && v.idle !== null) v.idle()
      return { response, seq: v.seq }
    }, err => {
      v.counts.settled(err)
      if (--v.inFlight === 0 && v.idle !== null) v.idle()
      throw err
    })
  }

  /**
   * Looks at the file now. Resolves once the new version serves (or at once
   * if the content did not change); rejects with the coded error of a bad
   * build, while the previous version keeps serving.
   */
  reload (): Promise<void> {
    if (this.#closing !== null) return Promise.reject(new DlhostError('ERR_CLOSED', 'the plugin is closed', { path: this.path }))
    return this.#requestReload(false)
  }

  #requestReload (force: boolean): Promise<void> {
    // Coalesce: while one reload runs, at most one more waits (it reads the file then).
    if (this.#queuedReload !== null && !force) return this.#queuedReload
    const p = this.#chain.then(() => {
      if (this.#queuedReload === p) this.#queuedReload = null
      if (this.#closing !== null) return
      return this.#reload(force)
    })
    this.#queuedReload = p
    this.#chain = p.catch(() => {})
    return p
  }

  async #reload (force: boolean): Promise<void> {
    // A watched change carries the content it settled with: while the file
    // still has that stat, load exactly that and count from the moment it
    // settled. Else (reload(), or the file moved on) read the file now.
    let change = this.#change
    this.#change = null
    if (change !== null && (change.bytes === undefined || statKey(fs.statSync(this.path, { throwIfNoEntry: false }) ?? null) !== statKey(change.stat))) change = null
    const t0 = change?.settledAt ?? performance.now()
    const old = this.#current
    let build: Build
    let prepared = false
    // The prepared copy's dlopen reference, held until the version's runtime has its own.
    let preloaded: Library | null = null
    try {
      // Every new build, before a byte of it is copied: a file someone else
      // could have planted is refused.
      checkTrusted(this.path, this.#opts.trust)
      const read: SourceBytes | null = change?.bytes !== undefined ? null : await this.#store.read(this.path)
      const bytes = read?.bytes ?? change?.bytes as Buffer
      const ready: Prepared | null = await this.#preparer.take(bytes)
      // A prepared copy's hash is known; the watcher's bytes are hashed only without one.
      const src: SourceBytes = read ?? { path: this.path, bytes, sha256: ready?.build.copy.sha256 ?? sha256(bytes), sourceStat: (change as ChangeEvent).stat }
      if (src.sha256 === old.sha256 && !force) {
        if (ready !== null) this.#preparer.discard(ready)
        this.#watcher?.markCurrent(src.sourceStat)
        return
      }
      if (this.#rolledBack.has(src.sha256)) {
        if (ready !== null) this.#preparer.discard(ready)
        this.#watcher?.markCurrent(src.sourceStat)
        throw new DlhostError('ERR_ROLLED_BACK', `this build (sha256 ${src.sha256.slice(0, 12)}…) was rolled back as a canary; it is tried again only once the file changes: ${this.path}`, { path: this.path })
      }
      if (ready !== null) {
        // Same content, copied and parsed while the file settled.
        build = { ...ready.build, copy: { ...ready.build.copy, sourceStat: src.sourceStat } }
        prepared = true
        preloaded = ready.lib
      } else {
        build = parseBuild(this.#store, await this.#store.copy(src, { deferSync: true }), this.path, this.#opts.entry)
      }
      // Only the check that depends on the serving version is left.
      checkSameAbi(this.#store, build, old.abi, this.path)
      if (this.#opts.probe === true && ready?.probed !== true) await this.#probe(build)
    } catch (err) {
      preloaded?.release()
      this.#fail(err)
      throw err
    }
    let strategy: 'shadow' | 'drain'
    let next: Version
    try {
      try {
        strategy = this.#choose(old, build)
      } catch (err) {
        await this.#removeCopy(build.copy.path)
        if (this.#opts.onStuck === 'restart' && err instanceof DlhostError && err.code === 'ERR_STUCK') {
          await this.#restartProcess(old, err.reason ?? 'cannot reload in place')
        }
        this.#fail(err)
        throw err
      }
      if (strategy === 'shadow') next = await this.#shadow(old, build)
      else {
        // One after the other: the new build is dlopen'ed only once the old one left.
        preloaded?.release()
        next = await this.#drain(old, build)
      }
    } finally {
      preloaded?.release()
    }
    this.#watcher?.markCurrent(build.copy.sourceStat)
    this.#reloads++
    const ev: ReloadEvent = { from: publicVersion(old), to: publicVersion(next), ms: round2(next.servingSince - t0), strategy, prepared }
    if (this.#handover !== undefined) ev.state = this.#handover
    this.#handover = undefined
    debug('reload %s: %d -> %d in %s ms (%s%s)', this.path, ev.from.seq, ev.to.seq, ev.ms.toFixed(2), strategy, prepared ? ', prepared while settling' : '')
    if (reloadChannel.hasSubscribers) reloadChannel.publish({ path: this.path, ...ev })
    emitSafely(this, 'reload', ev)
  }

  /** The serving version's facts decide how the next build comes in (rules.ts). */
  #choose (old: Version, next: Build): 'shadow' | 'drain' {
    // Across processes every pair of versions coexists, and ending a child unloads anything.
    if (this.#isolated) return this.strategy === 'drain' ? 'drain' : 'shadow'
    const s = reloadStrategy(this.strategy, old.elf)
    if (s === 'shadow') {
      // Side by side, a second Go or Python runtime aborts the process: never.
      const fatal = [...coexistFatal(old.elf), ...coexistFatal(next.elf)][0]
      if (fatal !== undefined) throw cannotCoexist(this.path, fatal)
    }
    if (s === 'drain' && this.#rollout !== null) throw cannotCanary(this.path, 'the serving version cannot run beside a second copy of itself (one unloads first)')
    if (s !== 'restart') return s
    // Neither side by side nor one after the other: only a new process can
    // take this build.
    const blocker = unloadBlockers(old.elf)[0]
    const reason = `${blocker}: the library can neither coexist with a second copy nor unload`
    this.#emitStuck(old, reason)
    const fix = blocker !== undefined ? ` ${EXPLAIN[blocker] ?? ''}` : ''
    throw new DlhostError('ERR_STUCK', `${this.path} cannot be reloaded in this process (${reason}); restart the process, or run it isolated (isolate: 'process').${fix}`, { path: this.path, reason })
  }

  /**
   * A build may be dlopen'ed before it settled (prepare: 'load') only when
   * it will be swapped in side by side and can leave the process again: one
   * that can't coexist (Go, GNU_UNIQUE) or can't unload (NODELETE) waits for
   * its turn.
   */
  #mayPreload (build: Build): boolean {
    if ((this.#opts.prepare ?? 'load') !== 'load' || this.#isolated || this.#opts.probe === true) return false
    return reloadStrategy(this.strategy, this.#current.elf) === 'shadow' && reloadStrategy('auto', build.elf) === 'shadow'
  }

  async #loadVersion (build: Build): Promise<Version> {
    const { copy, elf } = build
    let runtime: Runtime | IsolatedRuntime
    try {
      runtime = this.#isolated
        ? await load(copy.path, this.#cfg, { isolate: 'process', limits: this.#opts.limits, global: this.#opts.global, maxQueue: this.#opts.maxQueue, entry: build.abi, unloadTimeoutMs: this.#opts.unloadTimeoutMs, metrics: this.#opts.metrics })
        : await load(copy.path, this.#cfg, {
          pin: this.#opts.pin ?? false,
          global: this.#opts.global,
          maxQueue: this.#opts.maxQueue,
          entry: build.abi,
          unloadTimeoutMs: this.#opts.unloadTimeoutMs,
          metrics: this.#opts.metrics,
          known: { sha256: copy.sha256, elf }
        })
      // The copy's fsync ran while it loaded; no version serves before it is done.
      try {
        await copy.synced
      } catch (err) {
        await runtime.unload().catch(() => {})
        throw err
      }
    } catch (err) {
      await this.#removeCopy(copy.path).catch(() => {})
      throw err
    }
    // Numbered only once it loaded: a bad build takes no seq.
    let seq = this.#seqs.get(copy.sha256)
    if (seq === undefined) this.#seqs.set(copy.sha256, seq = this.#seqs.size + 1)
    const v: Version = { seq, sha256: copy.sha256, copy: copy.path, loadedAt: Date.now(), runtime, elf, abi: build.abi, hands: stateEntries(elf, build.abi), counts: new Counts(), snaps: [], inFlight: 0, state: 'serving', idle: null, servingSince: 0, leaving: null }
    this.#versions.push(v)
    this.#forwardMessages()
    return v
  }

  async #shadow (old: Version, build: Build): Promise<Version> {
    let next: Version
    try {
      next = await this.#loadVersion(build)
    } catch (err) {
      this.#fail(err) // rollback: old keeps serving
      throw err
    }
    if (this.#rollout !== null) return await this.#runCanary(old, next, this.#rollout)
    if (old.hands.exports) {
      // The hand-over: hold new calls, let the old version answer its own,
      // export, import into the new one, then let the held calls flow.
      const t0 = performance.now()
      this.#held ??= []
      let drainMs = 0
      let err: DlhostError | null = null
      let bytes: Buffer | null = null
      try {
        await this.#idle(old)
        drainMs = performance.now() - t0
        bytes = await this.#exportFrom(old)
        err = bytes === null ? null : await this.#importInto(next, bytes)
      } catch (e) {
        err = asDlhostError(e, this.path)
      }
      if (err !== null && (bytes === null || this.#opts.stateRejected !== 'fresh')) {
        // Rollback: the old version serves on, with its state.
        this.#releaseHeld()
        this.#fail(err)
        await this.#retire(next)
        throw err
      }
      this.#current = next
      next.servingSince = performance.now()
      old.state = 'draining'
      this.#releaseHeld()
      if (bytes !== null) this.#handover = { bytes: bytes.length, imported: err === null, pauseMs: round2(next.servingSince - t0), drainMs: round2(drainMs) }
      if (err !== null) this.#fail(err) // 'fresh': serving without the state, and said so
      void this.#retire(old)
      return next
    }
    this.#current = next
    next.servingSince = performance.now()
    old.state = 'draining'
    void this.#retire(old)
    return next
  }

  /** The hand-over of the reload in progress, for its 'reload' event. */
  #handover: StateHandover | undefined

  /** Resolves once the version has no call in flight. */
  async #idle (v: Version): Promise<void> {
    if (v.inFlight > 0) await new Promise<void>(resolve => { v.idle = resolve })
    v.idle = null
  }

  /**
   * The version's state (it has no call in flight), or null when it turns
   * out to export none; ERR_STATE_EXPORT when its export fails.
   */
  async #exportFrom (v: Version): Promise<Buffer | null> {
    try {
      return await v.runtime.stateStep(C.TASK_STATE_EXPORT)
    } catch (err) {
      const rc = err instanceof DlhostError ? err.rc : undefined
      if (rc === C.RC_NO_STATE_ENTRY) return null
      throw new DlhostError('ERR_STATE_EXPORT', `${STATE_EXPORT} of version ${v.seq} failed${rc !== undefined ? ` with rc ${rc}` : ''}; the reload is refused and it serves on: ${this.path}`, { path: this.path, rc, cause: err })
    }
  }

  /** Imports bytes into a version before its first call: null, or the coded refusal. */
  async #importInto (v: Version, bytes: Uint8Array): Promise<DlhostError | null> {
    const refused = (why: string, rc?: number, cause?: unknown): DlhostError =>
      new DlhostError('ERR_STATE_REJECTED', `version ${v.seq} ${why}: ${this.path}`, { path: this.path, rc, cause })
    if (!v.hands.imports) return refused(`cannot take the state (it does not export ${STATE_IMPORT})`)
    try {
      await v.runtime.stateStep(C.TASK_STATE_IMPORT, bytes)
      return null
    } catch (err) {
      const rc = err instanceof DlhostError ? err.rc : undefined
      if (rc === C.RC_NO_STATE_ENTRY) return refused(`cannot take the state (it does not export ${STATE_IMPORT})`)
      return refused(`refused the state${rc !== undefined ? ` (${STATE_IMPORT} rc ${rc})` : ''}`, rc, err)
    }
  }

  /**
   * Runtime.callBatch() on the version serving when it starts (held like a
   * call during a hand-over). While a canary runs, batches go to the stable
   * version: canary analysis weighs single calls.
   */
  async callBatch (reqs: ReadonlyArray<string | Uint8Array>, options?: CallOptions): Promise<Array<Buffer | DlhostError>> {
    if (this.#closing !== null) throw new DlhostError('ERR_CLOSED', 'the plugin is closed', { path: this.path })
    if (this.#held !== null) await new Promise<void>(resolve => this.#streamWaiters.push(resolve))
    const v = this.#canary?.stable ?? this.#current
    v.inFlight++
    try {
      const out = await v.runtime.callBatch(reqs, options)
      for (const r of out) {
        if (r instanceof DlhostError) v.counts.settled(r)
        else v.counts.ok++
      }
      return out
    } finally {
      if (--v.inFlight === 0 && v.idle !== null) v.idle()
    }
  }

  // Streams asked for while calls are held: they start once the calls flow.
  #streamWaiters: Array<() => void> = []

  /**
   * Like call(), with the answer in chunks (Runtime.stream()), from the
   * version serving when it starts; held like a call during a hand-over.
   */
  stream (req: string | Uint8Array, options?: StreamOptions): AsyncIterableIterator<Buffer> {
    // Checked now, not at the first next(): a bad option throws here.
    streamOptions(options)
    const self = this
    return (async function * () {
      if (self.#held !== null) await new Promise<void>(resolve => self.#streamWaiters.push(resolve))
      if (self.#closing !== null) throw new DlhostError('ERR_CLOSED', 'the plugin is closed', { path: self.path })
      const v = self.#current
      v.inFlight++
      try {
        yield * v.runtime.stream(req, options)
      } finally {
        if (--v.inFlight === 0 && v.idle !== null) v.idle()
      }
    })()
  }

  /** The held calls flow to the version serving now, in order (a timeout counts from the call). */
  #releaseHeld (): void {
    const held = this.#held ?? []
    this.#held = null
    const waiters = this.#streamWaiters
    this.#streamWaiters = []
    for (const w of waiters) w()
    for (const h of held) {
      h.stop?.()
      let opts = h.opts
      const t = opts?.timeoutMs
      if (typeof t === 'number' && t !== Infinity) opts = { ...opts, timeoutMs: Math.max(1, t - (performance.now() - h.since)) }
      this.#dispatch(this.#current, h.req, opts).then(h.resolve, h.reject)
    }
  }

  /**
   * The serving version's state, for a backup or a look: new calls are held
   * while the calls in flight finish and the state is exported, then flow
   * again. ERR_SYMBOL_MISSING when the plugin exports no
   * dlhost_state_export.
   */
  exportState (): Promise<Buffer> {
    if (this.#closing !== null) return Promise.reject(new DlhostError('ERR_CLOSED', 'the plugin is closed', { path: this.path }))
    const p = this.#chain.then(async () => {
      const v = this.#current
      if (!v.hands.exports) throw new DlhostError('ERR_SYMBOL_MISSING', `the plugin does not export ${STATE_EXPORT}: ${this.path}`, { path: this.path })
      this.#held ??= []
      try {
        await this.#idle(v)
        const bytes = await this.#exportFrom(v)
        if (bytes === null) throw new DlhostError('ERR_SYMBOL_MISSING', `the plugin does not export ${STATE_EXPORT}: ${this.path}`, { path: this.path })
        return bytes
      } finally {
        this.#releaseHeld()
      }
    })
    this.#chain = p.then(() => {}, () => {})
    return p
  }

  async #drain (old: Version, build: Build): Promise<Version> {
    const t0 = performance.now()
    this.#held ??= []
    let next: Version
    try {
      // The old version's state, once its calls are answered, before it goes.
      let bytes: Buffer | null = null
      let drainMs = 0
      if (old.hands.exports) {
        await this.#idle(old)
        drainMs = performance.now() - t0
        try {
          bytes = await this.#exportFrom(old)
        } catch (err) {
          this.#fail(err)
          throw err
        }
      }
      old.state = 'draining'
      const unmapped = await this.#unloadVersion(old, false)
      if (!unmapped) debug('drain %s: old version stuck, loading side by side', this.path)
      // Rollback: the previous build comes back from its private copy, with its state.
      const rollback = async (err: unknown): Promise<never> => {
        this.#fail(err)
        const copy: PrivateCopy = await this.#store.snapshot(old.copy)
        const back = await this.#loadVersion({ copy, elf: old.elf, abi: old.abi })
        back.seq = old.seq
        this.#seqs.set(old.sha256, old.seq)
        this.#current = back
        if (bytes !== null) {
          const lost = await this.#importInto(back, bytes)
          if (lost !== null) this.#fail(lost)
        }
        throw err
      }
      try {
        next = await this.#loadVersion(build)
      } catch (err) {
        return await rollback(err)
      }
      let refused: DlhostError | null = null
      if (bytes !== null) {
        refused = await this.#importInto(next, bytes)
        if (refused !== null && this.#opts.stateRejected !== 'fresh') {
          await this.#unloadVersion(next, true).catch(() => {})
          return await rollback(refused)
        }
      }
      this.#current = next
      next.servingSince = performance.now()
      if (bytes !== null) this.#handover = { bytes: bytes.length, imported: refused === null, pauseMs: round2(next.servingSince - t0), drainMs: round2(drainMs) }
      if (refused !== null) this.#fail(refused)
      if (unmapped) await this.#removeCopy(old.copy).catch(() => {})
      return next
    } finally {
      this.#releaseHeld()
    }
  }

  /** Waits for the version's calls, unloads it, and says whether it left the process. */
  #unloadVersion (v: Version, removeCopy: boolean): Promise<boolean> {
    if (v.leaving === null) v.leaving = this.#leave(v, removeCopy)
    return v.leaving
  }

  async #leave (v: Version, removeCopy: boolean): Promise<boolean> {
    await this.#idle(v)
    await v.runtime.unload()
    v.state = 'gone'
    this.#versions = this.#versions.filter(x => x !== v)
    this.#forwardMessages()
    const info = v.runtime.unloadInfo
    // An isolated version left with its child process, whatever its library.
    if (!this.#isolated && (isMapped(v.copy) || info?.mapped === true)) {
      const reason = info?.threadsStuck === true ? threadsStuckReason(v.elf) : (unloadBlockers(v.elf)[0] ?? stuckReasons(v.elf)[0] ?? STILL_MAPPED)
      this.#emitStuck(v, reason)
      return false
    }
    if (removeCopy) await this.#removeCopy(v.copy).catch(() => {})
    emitSafely(this, 'drained', { version: publicVersion(v) } satisfies DrainedEvent)
    return true
  }

  async #retire (v: Version): Promise<void> {
    try {
      await this.#unloadVersion(v, true)
    } catch (err) { this.#fail(err) }
  }

  /**
   * The shotgun restart: hold new calls, let the serving version answer the
   * ones it has, say so ('restart'), and exit 3 for the supervisor to start
   * the process again with the new build.
   */
  async #restartProcess (v: Version, reason: string): Promise<void> {
    this.#held ??= []
    if (v.inFlight > 0) await new Promise<void>(resolve => { v.idle = resolve })
    // A turn of the loop, so that the callers' own continuations of those
    // answers run before the process ends.
    await new Promise(resolve => setImmediate(resolve))
    debug('restart %s: %s', this.path, reason)
    emitSafely(this, 'restart', { version: publicVersion(v), reason, exitCode: 3 } satisfies RestartEvent)
    process.exit(3)
  }

  /** A probe load of the build in a throwaway child; a failure removes the copy. */
  async #probe (build: Build): Promise<void> {
    try {
      await probe(build.copy.path, ABI_NUMBERS[build.abi], this.#cfg, this.#opts.global === true, this.path)
    } catch (err) {
      await this.#removeCopy(build.copy.path).catch(() => {})
      throw err
    }
  }

  /** A copy leaves the store, and Level 1 forgets its path (never loaded again). */
  async #removeCopy (copy: string): Promise<void> {
    forgetPath(copy)
    await this.#store.remove(copy)
  }

  #emitStuck (v: Version, reason: string): void {
    debug('stuck %s v%d: %s', this.path, v.seq, reason)
    emitSafely(this, 'stuck', { version: publicVersion(v), reason } satisfies StuckEvent)
  }

  /** A bad build or a watcher problem: reported, never thrown at the service. */
  #fail (cause: unknown): void {
    const err = asDlhostError(cause, this.path)
    debug('error %s: %s', this.path, (err as Error)?.message)
    if (errorChannel.hasSubscribers) errorChannel.publish({ path: this.path, error: err })
    // An 'error' event without a listener would throw: a bad build must not
    // take the process down, so it is only emitted to those who listen.
    if (this.listenerCount('error') > 0) emitSafely(this, 'error', err)
  }

  // ---------------------------------------------------------------- rollout

  /** A canary needs two versions side by side, each free to diverge. */
  #checkCanaryable (elf: ElfInfo, handsState: boolean): void {
    if (this.strategy === 'drain') throw cannotCanary(this.path, "strategy 'drain' runs one version at a time")
    if (!this.#isolated) {
      const fatal = coexistFatal(elf)[0]
      if (fatal !== undefined) throw cannotCanary(this.path, `${fatal} cannot run beside a second copy of itself in one process; isolate: 'process' can`)
      if (reloadStrategy(this.strategy, elf) !== 'shadow') throw cannotCanary(this.path, 'the library cannot run beside a second copy of itself in this process (it never unloads); isolate: \'process\' can')
    }
    if (handsState) {
      throw new DlhostError('ERR_INVALID_ARG', `rollout with a plugin that hands its state over (dlhost_state_export): a canary and the stable version would each change their own copy of it, and one would be lost: ${this.path}`, { path: this.path })
    }
  }

  /** Routes one call while a canary runs: sticky by key, else by count. */
  #route (c: Canary, req: string | Uint8Array, opts: CallOptions | undefined): Promise<{ response: Buffer, seq: number }> {
    const key = opts?.key
    const toCanary = key !== undefined ? keyPoint(key) < c.rollout.canary : countGoesToCanary(this.#routed++, c.rollout.canary)
    if (!toCanary) return this.#dispatch(c.stable, req, opts)
    const p = this.#dispatch(c.v, req, opts)
    // Counted from the version's own counts (settled before this runs), so
    // the window holds exactly the calls the decision weighs.
    const counted = (): void => {
      const n = settledCount(c.v.counts) - c.startCount
      c.calls = n
      if (c.windowAt < 0) {
        if (n < c.warmup) return
        // The window starts after the canary's cold start (lazy binding,
        // first page faults, a poll thread getting a core).
        c.canaryBase = snapshot(c.v.counts, c.v.runtime.histogram)
        c.stableBase = snapshot(c.stable.counts, c.stable.runtime.histogram)
        c.windowAt = n
      }
      if (n - c.windowAt >= c.rollout.minCalls) void this.#decide(c, 'metrics', null)
    }
    if (!c.rollout.retry) return p.finally(counted)
    // retry: a failed canary call goes once to the version serving then.
    return p.then(r => { counted(); return r }, () => { counted(); return this.#dispatch(this.#canary?.stable ?? this.#current, req, opts) })
  }

  /** The new build becomes the canary; resolves with it once promoted, rejects (ERR_ROLLED_BACK) once rolled back. */
  #runCanary (stable: Version, next: Version, rollout: Rollout): Promise<Version> {
    return new Promise<Version>((resolve, reject) => {
      const c: Canary = {
        v: next,
        stable,
        rollout,
        calls: 0,
        startCount: settledCount(next.counts),
        windowAt: -1,
        warmup: Math.min(100, Math.ceil(rollout.minCalls / 10)),
        deciding: false,
        canaryBase: snapshot(next.counts, next.runtime.histogram),
        stableBase: snapshot(stable.counts, stable.runtime.histogram),
        timer: setTimeout(() => { void this.#decide(c, 'maxMs', null) }, rollout.maxMs),
        resolve,
        reject
      }
      next.servingSince = performance.now()
      this.#routed = 0
      this.#canary = c
      debug('canary %s: v%d takes %s of the calls beside v%d', this.path, next.seq, rollout.canary, stable.seq)
      if (rolloutChannel.hasSubscribers) rolloutChannel.publish({ path: this.path, kind: 'canary', from: publicVersion(stable), to: publicVersion(next) })
    })
  }

  /** Judges the canary (or acts on promote() / rollback()), then promotes or rolls it back. */
  async #decide (c: Canary, by: RolloutEvent['decidedBy'], forced: 'promote' | 'rollback' | null): Promise<void> {
    if (c.deciding || this.#canary !== c) return
    c.deciding = true
    const t0 = performance.now()
    clearTimeout(c.timer)
    const canary = metricsBetween(snapshot(c.v.counts, c.v.runtime.histogram), c.canaryBase, c.v.inFlight)
    const stable = metricsBetween(snapshot(c.stable.counts, c.stable.runtime.histogram), c.stableBase, c.stable.inFlight)
    const failed = forced === null ? judge(c.rollout, canary, stable) : null
    const rollback = forced === 'rollback' || failed !== null
    const reason = forced !== null ? `${forced}() was called` : failed ?? `passed: error rate ${(canary.errorRate * 100).toFixed(2)}%, service-time p99 ${canary.service.p99Ms} ms (stable ${stable.service.p99Ms} ms) over ${canary.calls} calls`
    this.#canary = null
    const ev: RolloutEvent = { from: publicVersion(c.stable), to: publicVersion(c.v), reason, decidedBy: by, stable, canary, decisionMs: 0 }
    if (rollback) {
      this.#rolledBack.add(c.v.sha256)
      c.v.state = 'draining'
      ev.decisionMs = Math.round((performance.now() - t0) * 1000) / 1000
      debug('rollback %s: v%d: %s', this.path, c.v.seq, reason)
      if (rolloutChannel.hasSubscribers) rolloutChannel.publish({ path: this.path, kind: 'rollback', ...ev })
      emitSafely(this, 'rollback', ev)
      c.reject(new DlhostError('ERR_ROLLED_BACK', `the canary (version ${c.v.seq}) was rolled back: ${reason}: ${this.path}`, { path: this.path, reason }))
      await this.#retire(c.v)
      return
    }
    this.#current = c.v
    c.stable.state = 'draining'
    ev.decisionMs = Math.round((performance.now() - t0) * 1000) / 1000
    debug('promote %s: v%d: %s', this.path, c.v.seq, reason)
    if (rolloutChannel.hasSubscribers) rolloutChannel.publish({ path: this.path, kind: 'promote', ...ev })
    emitSafely(this, 'promote', ev)
    c.resolve(c.v)
    void this.#retire(c.stable)
  }

  /** Ends the running canary now: it serves every call. Resolves once decided; ERR_NO_CANARY without one. */
  async promote (): Promise<void> {
    const c = this.#canary
    if (c === null) throw new DlhostError('ERR_NO_CANARY', `no canary is running: ${this.path}`, { path: this.path })
    await this.#decide(c, 'manual', 'promote')
  }

  /** Ends the running canary now: it leaves, and its bytes are not tried again until the file changes. */
  async rollback (): Promise<void> {
    const c = this.#canary
    if (c === null) throw new DlhostError('ERR_NO_CANARY', `no canary is running: ${this.path}`, { path: this.path })
    await this.#decide(c, 'manual', 'rollback')
  }

  /** The running canary, if any: its version and the calls it has had. */
  get canary (): { version: PluginVersion, stable: PluginVersion, calls: number } | null {
    const c = this.#canary
    return c === null ? null : { version: publicVersion(c.v), stable: publicVersion(c.stable), calls: c.calls }
  }

  /** Every live version's metrics: over its life and over about the last 10 s. */
  metrics (): VersionMetrics[] {
    const c = this.#canary
    return this.#versions.filter(v => v.state !== 'gone').map(v => {
      const now = snapshot(v.counts, v.runtime.histogram)
      const role = c !== null && v === c.v ? 'canary' : c !== null && v === c.stable ? 'stable' : v.state === 'serving' ? 'serving' : 'draining'
      return { version: publicVersion(v), role, life: metricsBetween(now, null, v.inFlight), window: metricsBetween(now, v.snaps[0] ?? null, v.inFlight) }
    })
  }

  /** A snapshot of every version, once a second; the oldest of ten is the window's start. */
  #tick (): void {
    for (const v of this.#versions) {
      if (v.state === 'gone') continue
      v.snaps.push(snapshot(v.counts, v.runtime.histogram))
      if (v.snaps.length > 10) v.snaps.shift()
    }
  }

  /** Stops watching, lets every version answer its calls, unloads them, removes the copies. Idempotent. */
  close (): Promise<void> {
    if (this.#closing === null) {
      this.#closing = (async () => {
        this.#watcher?.close()
        if (this.#ticker !== null) clearInterval(this.#ticker)
        const c = this.#canary
        if (c !== null) {
          // Closing ends a canary undecided: every version goes anyway.
          this.#canary = null
          c.deciding = true
          clearTimeout(c.timer)
          c.reject(new DlhostError('ERR_CLOSED', 'the plugin was closed while a canary ran', { path: this.path }))
        }
        await this.#chain
        await this.#preparer.close()
        await Promise.all(this.#versions.map(v => this.#unloadVersion(v, true).catch(err => this.#fail(err))))
        await this.#store.close()
      })()
    }
    return this.#closing
  }

  async [Symbol.asyncDispose] (): Promise<void> { await this.close() }
}

const round2 = (ms: number): number => Math.round(ms * 100) / 100

const ABI_NUMBERS: Record<Abi, number> = { host: C.ABI_HOST, native: C.ABI_NATIVE, 'lua-resty-ffi': C.ABI_LUA }

function settledCount (c: Counts): number {
  return c.ok + c.plugin + c.crash + c.timeout + c.other
}

function cannotCanary (path: string, reason: string): DlhostError {
  return new DlhostError('ERR_CANNOT_COEXIST', `a canary reload (rollout) needs two versions side by side, and ${reason}: ${path}`, { path, reason })
}

/** A running canary. */
interface Canary {
  v: Version
  stable: Version
  rollout: Rollout
  /** Canary calls settled. */
  calls: number
  /** The canary's settled count when it began, and (after the warm-up) when the window began (-1 before). */
  startCount: number
  windowAt: number
  /** Canary calls before the window starts (its cold start is not judged). */
  warmup: number
  deciding: boolean
  /** Both versions at the canary's start: the window they are compared over. */
  canaryBase: Snapshot
  stableBase: Snapshot
  timer: NodeJS.Timeout
  resolve: (v: Version) => void
  reject: (e: unknown) => void
}

function cannotCoexist (path: string, reason: string): DlhostError {
  return new DlhostError('ERR_CANNOT_COEXIST',
    `${path} cannot run beside a second copy of itself (${reason}): use strategy 'drain' or 'auto'`, { path, reason })
}

function publicVersion (v: Version): PluginVersion {
  return { seq: v.seq, sha256: v.sha256, copy: v.copy, loadedAt: v.loadedAt }
}

const warned = new Set<string>()

/**
 * Said when the plugin is loaded, not at its first reload: a library kept in
 * this process that glibc will never unload cannot be replaced cleanly. A
 * reload fails (ERR_STUCK) under 'auto', and leaves the previous version
 * mapped under 'shadow' or 'drain' (a leak per reload). A
 * process warning (once per path; type DlhostWarning, code
 * DLHOST_UNRELOADABLE), which --disable-warning=DLHOST_UNRELOADABLE silences.
 */
function warnUnreloadable (path: string, elf: ElfInfo, strategy: Strategy): void {
  const blocker = unloadBlockers(elf).find(b => b === 'GNU_UNIQUE' || b === 'NODELETE')
  if (blocker === undefined || warned.has(path)) return
  warned.add(path)
  const what = blocker === 'GNU_UNIQUE'
    ? `STB_GNU_UNIQUE symbols (${elf.gnuUnique.slice(0, 3).join(', ')}${elf.gnuUnique.length > 3 ? ', …' : ''})`
    : 'DF_1_NODELETE'
  const outcome = strategy === 'auto'
    ? 'a reload fails with ERR_STUCK (onStuck: \'restart\' exits for a supervisor)'
    : `every reload leaves the previous version mapped${blocker === 'GNU_UNIQUE' ? ', and the next copy shares its GNU_UNIQUE objects' : ''}`
  const message = `${path} has ${what}: glibc never unloads it, so in this process ${outcome}. ${EXPLAIN[blocker] ?? ''} Or leave isolate unset: 'auto' runs such a library in a child process.`
  debug('warning %s', message)
  process.emitWarning(message, { type: 'DlhostWarning', code: 'DLHOST_UNRELOADABLE' })
}

/**
 * Loads `path` as a reloadable plugin: calls always go to the current
 * version; a rebuilt file is picked up (watch) or on reload().
 */
export async function reloadable (path: string, cfg?: Cfg, options: ReloadableOptions = {}): Promise<Plugin> {
  checkPath(path)
  checkKeys(options, RELOADABLE_KEYS, 'reloadable() options')
  checkLimits(options.limits)
  const strategy = options.strategy ?? 'auto'
  if (!['auto', 'shadow', 'drain'].includes(strategy)) throw typeError("options.strategy must be 'auto', 'shadow' or 'drain'")
  if (options.settleMs !== undefined && (typeof options.settleMs !== 'number' || options.settleMs < 0)) throw rangeError('options.settleMs must be a number >= 0')
  if (options.prepare !== undefined && !['load', 'copy', 'off'].includes(options.prepare)) throw typeError("options.prepare must be 'load', 'copy' or 'off'")
  const w = options.watch
  if (w !== undefined && typeof w !== 'boolean') checkKeys(w, WATCH_KEYS, 'options.watch')
  const cfgBuf = frozenCfg(cfg) // before the store: a bad cfg must not leave one behind
  if (options.onStuck !== undefined && options.onStuck !== 'error' && options.onStuck !== 'restart') throw typeError("options.onStuck must be 'error' or 'restart'")
  if (options.badBuildMs !== undefined && (typeof options.badBuildMs !== 'number' || !(options.badBuildMs >= 0))) throw rangeError('options.badBuildMs must be a number >= 0')
  if (options.maxBuildBytes !== undefined && (typeof options.maxBuildBytes !== 'number' || !(options.maxBuildBytes >= 1))) throw rangeError('options.maxBuildBytes must be a number >= 1')
  checkTrustOption(options.trust)
  if (options.initialState !== undefined && !(options.initialState instanceof Uint8Array)) throw typeError('options.initialState must be a Uint8Array')
  if (options.stateRejected !== undefined && options.stateRejected !== 'rollback' && options.stateRejected !== 'fresh') throw typeError("options.stateRejected must be 'rollback' or 'fresh'")
  const store = await CopyStore.create({ dir: options.copyDir, maxBuildBytes: options.maxBuildBytes })
  // A relative path is resolved once, now: a later chdir() changes nothing.
  const plugin = new Plugin(resolvePath(path), cfgBuf, options, store)
  try {
    await plugin.start()
  } catch (err) {
    await plugin.close().catch(() => {})
    await store.close()
    throw err
  }
  return plugin
}
