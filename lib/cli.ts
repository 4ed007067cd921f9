#!/usr/bin/env node
/**
 * The `dlhost` command.
 *
 *   dlhost inspect FILE [--json]   diagnose whether a shared library can unload
 *   dlhost supervise [options] -- CMD ARGS…   restart CMD when it exits 3
 *   dlhost --help | --version
 *
 * Exit codes of `inspect`: 0 unloadable (also when only conditionally, see
 * lib/inspect.ts), 1 not unloadable, 2 usage error or a bad file (the error
 * code is printed).
 *
 * Imports only modules without native code (inspect, elf, rules, trust,
 * errors, supervise): the CLI must not load the native addon.
 */
import * as fs from 'fs'
import * as path from 'path'
import { DlhostError } from './errors'
import { inspect, InspectReport } from './inspect'
import { parseSupervise, supervise, SUPERVISE_USAGE } from './supervise'
import { EXPLAIN } from './rules'

export interface CliIo {
  out (text: string): void
  err (text: string): void
}

const processIo: CliIo = {
  out: (text) => { process.stdout.write(text) },
  err: (text) => { process.stderr.write(text) }
}

const USAGE = `Usage: dlhost <command> [options]

Commands:
  inspect FILE [--json]   Diagnose whether a shared library can really be
                          unloaded (dlclose) and hot-reloaded, and which plugin
                          ABI it offers. Exit 0: a plugin that can unload,
                          1: stays loaded, 2: usage error or not a usable
                          file, 3: can unload but is not a plugin.
  supervise [options] -- CMD [ARGS...]
                          Run CMD; start it again when it exits 3 (the
                          shotgun restart); forward signals. See
                          dlhost supervise --help.

Options:
  -h, --help              Show this help (also: dlhost inspect --help).
  -v, --version           Print the version.
`

const INSPECT_USAGE = `Usage: dlhost inspect FILE [--json]

Reads FILE's ELF headers (nothing is loaded) and reports what would keep it
mapped after dlclose: DF_1_NODELETE, STB_GNU_UNIQUE symbols, thread_local
destructors, a Go runtime; the plugin ABI (dlhost_init, dlhost_handle,
libffi_init); and whether two versions can coexist in one process.

  --json    Print the report as JSON (errors as {"error": {...}}).

Headline: CAN UNLOAD (dlclose removes it; possibly once some threads have
exited), STAYS LOADED (dlclose leaves it mapped until the process exits),
and NOT A PLUGIN when it exports no entry (open() can load it; load() and
reloadable() cannot).

Exit status: 0 a plugin that can unload (possibly conditionally), 1 stays
loaded, 2 usage error or bad file, 3 can unload but is not a plugin.
`

const VERDICT_LINE: Record<InspectReport['verdict'], string> = {
  unloadable: 'CAN UNLOAD: nothing static keeps it mapped after dlclose',
  conditional: 'CAN UNLOAD (conditionally): it leaves once the threads that used its thread_locals have exited',
  stuck: 'STAYS LOADED: dlclose will leave it mapped until the process exits'
}

const NOT_A_PLUGIN = 'NOT A PLUGIN: it exports no entry (dlhost_init, dlhost_handle, libffi_init); open() can load it, load() and reloadable() cannot'

/** `dlhost inspect`'s exit status (see INSPECT_USAGE). */
export function inspectExitCode (r: InspectReport): 0 | 1 | 3 {
  if (!r.unloadable) return 1
  return r.abi === null ? 3 : 0
}

const ABI_NAMES: Record<string, string> = {
  native: 'plugin-driven',
  host: 'host-driven',
  'lua-resty-ffi': 'lua-resty-ffi compatible'
}

function list (names: string[], max = 5): string {
  const shown = names.slice(0, max).join(', ')
  return names.length > max ? `${shown}, … (${names.length} in all)` : shown
}

/** The readable report printed by `dlhost inspect`. */
export function formatReport (r: InspectReport): string {
  const lines: string[] = []
  const pad = (label: string): string => label.padEnd(25)
  lines.push(`${r.path}: ${VERDICT_LINE[r.verdict]}`)
  if (r.abi === null) lines.push(`${r.path}: ${NOT_A_PLUGIN}`)
  const hard = r.reasons.filter(x => !r.warnings.includes(x))
  if (hard.length > 0) {
    lines.push('reasons:')
    for (const reason of hard) {
      lines.push(`  ${pad(reason)}${EXPLAIN[reason] ?? ''}`)
      if (reason === 'GNU_UNIQUE') lines.push(`  ${pad('')}symbols: ${list(r.gnuUnique)}`)
    }
  }
  if (r.warnings.length > 0) {
    lines.push('warnings:')
    for (const w of r.warnings) lines.push(`  ${pad(w)}${EXPLAIN[w] ?? ''}`)
  }
  lines.push(`abi:      ${r.abi === null ? 'none (exports no dlhost_init, dlhost_handle or libffi_init)' : `${r.abi} (${ABI_NAMES[r.abi] ?? r.abi}; entry ${String(r.entry)})`}`)
  lines.push(`machine:  ${r.machine} (ELF${r.class}, ${r.endian === 'le' ? 'little' : 'big'} endian)${r.loadable ? '' : ` — not loadable here: ${r.loadError?.message ?? 'incompatible'}`}`)
  lines.push(`coexist:  ${r.canCoexist ? 'yes (two versions can be loaded side by side)' : `no (${r.coexistBlockers.join(', ')})`}`)
  const reload = r.autoStrategy === 'shadow'
    ? 'shadow (new version side by side, old one drains and unloads)'
    : r.autoStrategy === 'drain'
      ? 'drain (old version unloads before the new one loads)'
      : 'restart (never leaves the process: only a new process can take the next build)'
  lines.push(`reload:   ${reload}`)
  lines.push(`trust:    ${r.trusted ? 'yes (owned by this user or root, not writable by others)' : `NO: ${String(r.untrusted)} (open/load/reloadable refuse it: ERR_UNTRUSTED)`}`)
  if (r.soname !== undefined) lines.push(`soname:   ${r.soname}`)
  if (r.needed.length > 0) lines.push(`needed:   ${list(r.needed, 8)}`)
  lines.push(`exports:  ${r.exports.length === 0 ? 'none' : list(r.exports, 8)}`)
  return lines.join('\n') + '\n'
}

function version (): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version?: unknown }
    return typeof pkg.version === 'string' ? pkg.version : 'unknown'
  } catch {
    return 'unknown'
  }
}

function usageError (io: CliIo, message: string, usage: string): number {
  io.err(`dlhost: ${message}\n\n${usage}`)
  return 2
}

async function cmdInspect (args: string[], io: CliIo): Promise<number> {
  let json = false
  const files: string[] = []
  let optionsDone = false
  for (const a of args) {
    if (!optionsDone && a === '--') { optionsDone = true; continue }
    if (!optionsDone && (a === '-h' || a === '--help')) { io.out(INSPECT_USAGE); return 0 }
    if (!optionsDone && a === '--json') { json = true; continue }
    if (!optionsDone && a.startsWith('-') && a !== '-') return usageError(io, `inspect: unknown option ${a}`, INSPECT_USAGE)
    files.push(a)
  }
  if (files.length !== 1) return usageError(io, files.length === 0 ? 'inspect: missing FILE' : 'inspect: exactly one FILE, please', INSPECT_USAGE)
  const file = files[0] as string
  let report: InspectReport
  try {
    report = await inspect(file)
  } catch (err) {
    const code = err instanceof DlhostError ? err.code : (err as { code?: unknown })?.code
    const message = err instanceof Error ? err.message : String(err)
    if (json) io.out(JSON.stringify({ error: { code: typeof code === 'string' ? code : 'ERR_INTERNAL', message, path: file } }, null, 2) + '\n')
    io.err(`dlhost: ${typeof code === 'string' ? code : 'error'}: ${message}\n`)
    return 2
  }
  io.out(json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report))
  return inspectExitCode(report)
}

/** Runs the CLI with `argv` (without node and the script) and returns the exit code. */
export async function main (argv: string[], io: CliIo = processIo): Promise<number> {
  const [cmd, ...rest] = argv
  switch (cmd) {
    case undefined:
      return usageError(io, 'missing command', USAGE)
    case '-h': case '--help': case 'help':
      io.out(USAGE)
      return 0
    case '-v': case '--version':
      io.out(`${version()}\n`)
      return 0
    case 'inspect':
      return await cmdInspect(rest, io)
    case 'supervise': {
      const p = parseSupervise(rest)
      if ('help' in p) { io.out(SUPERVISE_USAGE); return 0 }
      if ('error' in p) return usageError(io, p.error, SUPERVISE_USAGE)
      return await supervise(p.cmd, p.opts, line => io.err(line + '\n'))
    }
    default:
      return usageError(io, `unknown command ${cmd}`, USAGE)
  }
}

if (require.main === module) {
  // A closed pipe (`dlhost inspect x | head -1`) is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE') throw err })
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code },
    (err: unknown) => {
      process.stderr.write(`dlhost: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
      process.exitCode = 2
    })
}
