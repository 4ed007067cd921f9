/// <reference types="node" preserve="true" />
// The declarations use Buffer, EventEmitter and AbortSignal: a consumer's
// `tsc --init` config (types: []) must still find @types/node.
/**
 * dlhost: host native shared libraries in Node.js — refcounted dlopen/dlclose
 * (Level 1), lock-free runtimes (Level 2), hot reload (Level 3).
 */
export { open, libraries, Library } from './library'
export type { OpenOptions, LibraryVersion, LibraryRow } from './library'
export { load, Runtime } from './runtime'
export { IsolatedRuntime } from './isolate/runtime'
export type { MessagesOptions } from './messages'
export type { StreamOptions } from './stream'
export type { IsolatedRuntimeEvents } from './isolate/runtime'
export type { Limits } from './isolate/host'
export type { Abi, Cfg, LoadOptions, CallOptions, RuntimeStats, RuntimeEvents } from './runtime'
export { DlhostError, codes } from './errors'
export type { DlhostErrorCode } from './errors'
export { inspect } from './inspect'
export type { Trust } from './trust'
export type { InspectReport } from './inspect'
import { binding } from './binding'
/** The plugin ABI version this build of dlhost implements (DLHOST_ABI_VERSION). */
export const abiVersion: number = binding.abiVersion
export { reloadable, Plugin } from './reload/plugin'
export type { Strategy, ReloadableOptions, WatchOptions, PluginVersion, VersionState, ReloadEvent, StateHandover, DrainedEvent, StuckEvent, RestartEvent, PluginEvents, RolloutEvent, VersionMetrics } from './reload/plugin'
export type { RolloutOptions } from './reload/rollout'
export type { CallMetrics, LatencySummary } from './metrics'
