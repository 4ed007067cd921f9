// Shared by the tap tests (not a test file itself: tap includes *.test.ts only).
import { spawn, spawnSync, SpawnSyncOptions } from 'child_process'
import fs from 'fs'
import path from 'path'

export const root = path.join(__dirname, '..', '..')
export const fixtures = path.join(root, 'test', 'fixtures', 'out')
export const examples = path.join(root, 'examples', 'out')
export const dist = path.join(root, 'dist', 'index.js')

export function fixture (name: string): string {
  return path.join(fixtures, name)
}

/** A private copy of a fixture, so a test owns its identity (pinning is for life). */
export function copyOf (src: string, dir: string, name = path.basename(src)): string {
  const dst = path.join(dir, name)
  fs.copyFileSync(src, dst)
  return fs.realpathSync(dst)
}

/** Independent of dlhost: is any mapping of exactly this path in /proc/self/maps? */
export function inMaps (file: string): boolean {
  const maps = fs.readFileSync('/proc/self/maps', 'utf8')
  return maps.split('\n').some(l => {
    const i = l.indexOf('/')
    if (i < 0) return false
    const name = l.slice(i).replace(/ \(deleted\)$/, '')
    return name === file
  })
}

/** Runs a node script (source text) in a child; returns status, stdout, stderr. */
export function runNode (source: string, opts: SpawnSyncOptions & { args?: string[] } = {}): { status: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string, ms: number } {
  const t0 = Date.now()
  // Without tap's NODE_OPTIONS: children load dist/ with plain node.
  const env = { ...(opts.env ?? process.env) }
  delete env.NODE_OPTIONS
  const r = spawnSync(process.execPath, [...(opts.args ?? []), '-e', source], { encoding: 'utf8', timeout: 60000, cwd: root, ...opts, env })
  return { status: r.status, signal: r.signal, stdout: String(r.stdout), stderr: String(r.stderr), ms: Date.now() - t0 }
}

/** A copy of a library with e_machine patched (EM_AARCH64 by default). */
export function foreignCopy (src: string, dst: string, machine = 183): string {
  const b = fs.readFileSync(src)
  b.writeUInt16LE(machine, 18)
  fs.writeFileSync(dst, b)
  return dst
}

/** Node arguments that let a plain `node` child require .ts files the way tap does. */
export function tsLoaderArgs (): string[] {
  const fromTap = process.execArgv.filter((a) => a.includes('@tapjs/typescript'))
  if (fromTap.length > 0) return fromTap
  return ['--import=' + new URL('file://' + path.join(root, 'node_modules/@tapjs/typescript/dist/esm/import.mjs')).href]
}

/** Runs a TypeScript script in a child with tap's loader; rejects if it does not exit within timeoutMs. */
export async function runChild (script: string, timeoutMs = 30000): Promise<{ code: number | null, signal: string | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [...tsLoaderArgs(), script], {
    cwd: root,
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`child did not exit within ${timeoutMs} ms; stdout=${stdout} stderr=${stderr}`))
    }, timeoutMs)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      // let the pipes drain
      setImmediate(() => resolve({ code, signal, stdout, stderr }))
    })
  })
}

/**
 * Collects the process warnings with `code` for the rest of test `t`,
 * instead of Node printing them: a test that loads an unreloadable library
 * on purpose asserts its warning, and the run's output stays what is true.
 */
export function collectWarnings (t: { teardown: (fn: () => void) => void }, code: string): Error[] {
  const seen: Error[] = []
  const others = process.listeners('warning')
  process.removeAllListeners('warning')
  const on = (w: Error & { code?: string }): void => {
    if (w.code === code) seen.push(w)
    else for (const l of others) l(w)
  }
  process.on('warning', on)
  t.teardown(() => {
    process.off('warning', on)
    for (const l of others) process.on('warning', l)
  })
  return seen
}
