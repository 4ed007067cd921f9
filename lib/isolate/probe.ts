/**
 * Probe loads: a new build is dlopen'ed and init'ed in a throwaway child
 * process (dlhost-host --probe) before the host loads it. A build whose
 * constructors or init crash, abort, exit or hang, or that crashes ld.so,
 * is a bad build (ERR_PROBE_FAILED) that never reaches the host. JS thread
 * only.
 */
import { ChildProcess } from 'child_process'
import { DlhostError } from '../errors'
import { howEnded, startHost } from './host'

/** How long a probe may take (dlopen, constructors, init) before it counts as hung. */
export const PROBE_TIMEOUT_MS = 10000

export async function probe (lib: string, abi: number, cfg: Buffer, global: boolean, path: string): Promise<void> {
  let child: ChildProcess
  try {
    child = startHost({ lib, abi, global, maxQueue: 64, unloadTimeoutMs: 0, probe: true })
  } catch (err) {
    throw new DlhostError('ERR_PROBE_FAILED', `cannot start a probe of ${path}: ${(err as Error).message}`, { path, cause: err })
  }
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => { if (stderr.length < 4096) stderr += d.toString() })
  child.stdin?.end(cfg)
  const [code, signal, hung] = await new Promise<[number | null, NodeJS.Signals | null, boolean]>(resolve => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve([null, 'SIGKILL', true]) }, PROBE_TIMEOUT_MS)
    child.once('exit', (c, s) => { clearTimeout(timer); resolve([c, s, false]) })
    child.once('error', () => { clearTimeout(timer); resolve([127, null, false]) })
  })
  if (code === 0 && !hung) return
  const how = hung ? `hung for ${PROBE_TIMEOUT_MS} ms` : howEnded(code, signal)
  const said = stderr.trim().split('\n').pop()?.replace(/^dlhost-host: /, '')
  throw Object.assign(new DlhostError('ERR_PROBE_FAILED', `${path}: the new build failed its probe load (${how}${said !== undefined && said !== '' ? `: ${said}` : ''}); it was not loaded`,
    { path, reason: hung ? 'hung' : signal ?? `exit ${String(code)}`, loaderMessage: stderr.trim() || undefined }), { signal, exitCode: code })
}
