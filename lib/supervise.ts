/**
 * `dlhost supervise [options] -- CMD ARGS…`: Webware ImportSpy's shotgun
 * restart, done right. Runs the program and starts it again when it exits
 * with the restart code (3 by default: what a plugin host exits with when a
 * reload can only happen in a new process, see reloadable's onStuck);
 * forwards SIGINT, SIGTERM and SIGHUP; with --on-crash also restarts it when
 * it crashes (a signal, or an exit code other than 0 and the restart code).
 * Restarts back off exponentially while the program keeps failing fast and
 * stop after --max-restarts within --window seconds. Otherwise it exits with
 * the program's code, or 128 + its signal, as a shell does.
 *
 * No native code here: the CLI never loads the addon.
 */
import { spawn } from 'child_process'
import { constants } from 'os'

export interface SuperviseOptions {
  restartCode: number
  onCrash: boolean
  maxRestarts: number
  windowSec: number
  /** First backoff delay; doubles per quick failure, at most 30 s. */
  backoffMs: number
  /** A run longer than this resets the backoff (s). */
  stableSec: number
}

export const SUPERVISE_USAGE = `Usage: dlhost supervise [options] -- CMD [ARGS...]

Runs CMD and starts it again when it exits with the restart code (the
shotgun restart: a plugin host that cannot reload a library in place exits
3, see reloadable's onStuck: 'restart'). SIGINT, SIGTERM and SIGHUP are
forwarded; after SIGINT or SIGTERM it is not restarted.

  --restart-code N   exit code that means "start me again" (default 3)
  --on-crash         also restart after a crash (a signal, or any exit code
                     other than 0 and the restart code)
  --max-restarts N   give up after N restarts within --window (default 10)
  --window S         seconds (default 60)
  --backoff-ms N     first delay between quick restarts, doubling up to
                     30 s (default 100); reset once a run lasts 10 s

Exit status: the program's, or 128 + its signal.
`

export type Parsed = { cmd: string[], opts: SuperviseOptions } | { error: string } | { help: true }

export function parseSupervise (args: string[]): Parsed {
  const opts: SuperviseOptions = { restartCode: 3, onCrash: false, maxRestarts: 10, windowSec: 60, backoffMs: 100, stableSec: 10 }
  const num = (name: string, v: string | undefined, min: number): number | string => {
    const n = Number(v)
    return v === undefined || !Number.isInteger(n) || n < min ? `${name} needs an integer >= ${min}` : n
  }
  let i = 0
  for (; i < args.length; i++) {
    const a = args[i] as string
    if (a === '--') { i++; break }
    if (a === '-h' || a === '--help') return { help: true }
    if (a === '--on-crash') { opts.onCrash = true; continue }
    const keys: Record<string, 'restartCode' | 'maxRestarts' | 'windowSec' | 'backoffMs'> = { '--restart-code': 'restartCode', '--max-restarts': 'maxRestarts', '--window': 'windowSec', '--backoff-ms': 'backoffMs' }
    const key = keys[a]
    if (key === undefined) return { error: a.startsWith('-') ? `supervise: unknown option ${a}` : `supervise: put the command after --: dlhost supervise -- ${a}` }
    const n = num(a, args[++i], key === 'maxRestarts' || key === 'backoffMs' ? 0 : 1)
    if (typeof n === 'string') return { error: `supervise: ${n}` }
    if (key === 'restartCode' && n > 255) return { error: 'supervise: --restart-code must be 1..255' }
    opts[key] = n
  }
  const cmd = args.slice(i)
  if (cmd.length === 0) return { error: 'supervise: missing the command (after --)' }
  return { cmd, opts }
}

/** Runs the supervision loop; resolves with the exit code to exit with. */
export async function supervise (cmd: string[], opts: SuperviseOptions, log: (line: string) => void): Promise<number> {
  const restarts: number[] = []
  let delay = opts.backoffMs
  let stopping = false
  let child: ReturnType<typeof spawn> | null = null
  const forward = (sig: NodeJS.Signals): void => {
    if (sig !== 'SIGHUP') stopping = true
    child?.kill(sig)
  }
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']
  for (const s of signals) process.on(s, forward)
  try {
    for (;;) {
      const started = Date.now()
      const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
        child = spawn(cmd[0] as string, cmd.slice(1), { stdio: 'inherit' })
        child.once('error', (err) => {
          log(`dlhost supervise: cannot run ${String(cmd[0])}: ${err.message}`)
          resolve([127, null])
        })
        child.once('exit', (c, s) => resolve([c, s]))
      })
      child = null
      const status = signal !== null ? 128 + (constants.signals[signal] ?? 0) : (code ?? 1)
      const restart = !stopping && (code === opts.restartCode || (opts.onCrash && status !== 0))
      if (!restart) return status
      const now = Date.now()
      if (now - started >= opts.stableSec * 1000) delay = opts.backoffMs
      restarts.push(now)
      while (restarts.length > 0 && (restarts[0] as number) < now - opts.windowSec * 1000) restarts.shift()
      if (restarts.length > opts.maxRestarts) {
        log(`dlhost supervise: ${restarts.length - 1} restarts within ${opts.windowSec} s: giving up (exit ${status})`)
        return status
      }
      const why = signal !== null ? `signal ${signal}` : `exit code ${String(code)}`
      const wait = now - started >= opts.stableSec * 1000 ? 0 : delay
      log(`dlhost supervise: ${String(cmd[0])} ended (${why}); starting it again${wait > 0 ? ` in ${wait} ms` : ''}`)
      if (wait > 0) {
        await new Promise(resolve => setTimeout(resolve, wait))
        delay = Math.min(delay * 2, 30000)
      }
      if (stopping) return status
    }
  } finally {
    for (const s of signals) process.removeListener(s, forward)
  }
}
