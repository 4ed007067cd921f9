/**
 * Where the child host (dlhost-host, built by binding.gyp beside the addon)
 * is, and how one is started: its fds (0: the lifeline, 3: the channel,
 * 4: the doorbell) and its options. JS thread only.
 */
import { ChildProcess, spawn } from 'child_process'
import fs from 'fs'
import path from 'path'
import { DlhostError, rangeError, typeError } from '../errors'
import { checkKeys } from '../options'

export interface Limits {
  /** Resident memory of the child, in MiB: a watchdog in the child checks it every 5 ms and kills it past the limit. */
  memoryMb?: number
  /** CPU time of the child, in seconds (RLIMIT_CPU: SIGXCPU). */
  cpuSeconds?: number
  /** Open descriptors of the child (RLIMIT_NOFILE). */
  openFiles?: number
}

const LIMIT_KEYS: Record<keyof Limits, true> = { memoryMb: true, cpuSeconds: true, openFiles: true }

/** Checks a `limits` option: known keys, each a positive integer. */
export function checkLimits (limits: unknown): void {
  checkKeys(limits, LIMIT_KEYS, 'options.limits')
  if (limits === undefined) return
  for (const [k, v] of Object.entries(limits as Record<string, unknown>)) {
    if (v === undefined) continue
    if (typeof v !== 'number' || !Number.isInteger(v)) throw typeError(`options.limits.${k} must be an integer`)
    if (v < 1 || v > 2 ** 31 - 1) throw rangeError(`options.limits.${k} must be between 1 and 2147483647`)
  }
}

let found: string | undefined

/** The dlhost-host executable: build/Release's, else the prebuild's (node-gyp-build's order for the addon). */
export function hostPath (): string {
  if (found !== undefined) return found
  const root = path.join(__dirname, '..', '..')
  const candidates = [
    path.join(root, 'build', 'Release', 'dlhost-host'),
    path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'dlhost-host')
  ]
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK)
      found = c
      return c
    } catch {}
  }
  throw new DlhostError('ERR_NOT_FOUND', `the isolation host (dlhost-host) is not built: looked in ${candidates.join(', ')}`)
}

export interface StartOptions {
  lib: string
  abi: number
  global: boolean
  maxQueue: number
  unloadTimeoutMs: number
  limits?: Limits
  probe?: boolean
  fds?: [number, number]
}

export function startHost (o: StartOptions): ChildProcess {
  const args = ['--parent', String(process.pid), '--lib', o.lib, '--abi', String(o.abi), '--max-queue', String(o.maxQueue),
    '--unload-timeout-ms', String(o.unloadTimeoutMs)]
  if (o.global) args.push('--global')
  if (o.probe === true) args.push('--probe')
  if (o.limits?.memoryMb !== undefined) args.push('--memory-mb', String(o.limits.memoryMb))
  if (o.limits?.cpuSeconds !== undefined) args.push('--cpu-seconds', String(o.limits.cpuSeconds))
  if (o.limits?.openFiles !== undefined) args.push('--open-files', String(o.limits.openFiles))
  const stdio: Array<'pipe' | 'inherit' | 'ignore' | number> = ['pipe', 'ignore', 'pipe']
  if (o.fds !== undefined) stdio.push(o.fds[0], o.fds[1])
  const child = spawn(hostPath(), args, { stdio })
  // The lifeline: never written; the child sees EOF when this process is gone.
  child.stdin?.on('error', () => {})
  return child
}

/** The signal or exit status a child ended with, as words. */
export function howEnded (code: number | null, signal: NodeJS.Signals | null): string {
  return signal !== null ? `signal ${signal}` : `exit code ${String(code)}`
}
