// `dlhost supervise` (the shotgun restart) and reloadable's onStuck: 'restart'.
import t from 'tap'
import { execFileSync, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { parseSupervise } from '../lib/supervise'
import { dist, root } from './lib/helpers'

const cli = path.join(root, 'dist', 'cli.js')
const env = (): NodeJS.ProcessEnv => { const e = { ...process.env }; delete e.NODE_OPTIONS; return e }

/** A program that counts its runs in `file` and exits with codes[run] (the last one after). */
function program (dir: string, codes: number[]): string[] {
  const file = path.join(dir, 'runs')
  const script = path.join(dir, 'prog.js')
  fs.writeFileSync(script, `
    const fs = require('fs')
    const n = fs.existsSync(${JSON.stringify(file)}) ? Number(fs.readFileSync(${JSON.stringify(file)}, 'utf8')) : 0
    fs.writeFileSync(${JSON.stringify(file)}, String(n + 1))
    const codes = ${JSON.stringify(codes)}
    process.exit(codes[Math.min(n, codes.length - 1)])`)
  return [process.execPath, script]
}
const runs = (dir: string): number => Number(fs.readFileSync(path.join(dir, 'runs'), 'utf8'))

t.test('restarts on the restart code, not on 0 or 1; exits with the program\'s code', async t => {
  for (const [codes, exit, n] of [[[3, 3, 0], 0, 3], [[3, 1], 1, 2], [[0], 0, 1], [[1], 1, 1]] as const) {
    const dir = t.testdir()
    const r = spawnSync(process.execPath, [cli, 'supervise', '--backoff-ms', '1', '--', ...program(dir, [...codes])], { encoding: 'utf8', env: env() })
    t.equal(r.status, exit, `codes ${codes.join(',')}: exit ${exit}`)
    t.equal(runs(dir), n, `ran ${n} times`)
  }
})

t.test('a restart loop backs off and is given up', async t => {
  const dir = t.testdir()
  const t0 = Date.now()
  const r = spawnSync(process.execPath, [cli, 'supervise', '--max-restarts', '3', '--window', '60', '--backoff-ms', '50', '--', ...program(dir, [3])], { encoding: 'utf8', env: env() })
  t.equal(r.status, 3, 'the program\'s code once it gives up')
  t.equal(runs(dir), 4, 'the first run and three restarts')
  t.ok(Date.now() - t0 >= 50 + 100 + 200, 'delays doubled between quick restarts')
  t.match(r.stderr, /giving up/)
})

t.test('--on-crash restarts after a signal too; without it the signal ends supervision', async t => {
  const dir = t.testdir()
  const script = path.join(dir, 'crash.js')
  const file = path.join(dir, 'runs')
  fs.writeFileSync(script, `
    const fs = require('fs')
    const n = fs.existsSync(${JSON.stringify(file)}) ? Number(fs.readFileSync(${JSON.stringify(file)}, 'utf8')) : 0
    fs.writeFileSync(${JSON.stringify(file)}, String(n + 1))
    if (n === 0) process.kill(process.pid, 'SIGSEGV')`)
  const a = spawnSync(process.execPath, [cli, 'supervise', '--backoff-ms', '1', '--', process.execPath, script], { encoding: 'utf8', env: env() })
  t.equal(a.status, 128 + 11, '128 + SIGSEGV')
  fs.rmSync(file)
  const b = spawnSync(process.execPath, [cli, 'supervise', '--on-crash', '--backoff-ms', '1', '--', process.execPath, script], { encoding: 'utf8', env: env() })
  t.equal(b.status, 0)
  t.equal(runs(dir), 2, 'started again after the crash')
})

t.test('SIGTERM is forwarded and ends supervision with the program\'s code', async t => {
  const dir = t.testdir()
  const script = path.join(dir, 'term.js')
  fs.writeFileSync(script, `
    process.on('SIGTERM', () => { console.log('got SIGTERM'); process.exit(7) })
    console.log('ready'); setInterval(() => {}, 1000)`)
  const sup = spawn(process.execPath, [cli, 'supervise', '--', process.execPath, script], { env: env(), stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  await new Promise<void>(resolve => sup.stdout.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('ready')) resolve() }))
  const exited = new Promise<number | null>(resolve => sup.once('exit', code => resolve(code)))
  sup.kill('SIGTERM')
  t.equal(await exited, 7)
  t.match(out, /got SIGTERM/)
})

t.test('usage errors', async t => {
  t.match(parseSupervise([]), { error: /missing the command/ })
  t.match(parseSupervise(['--restart-code', 'x', '--', 'a']), { error: /integer/ })
  t.match(parseSupervise(['--nope', '--', 'a']), { error: /unknown option/ })
  t.match(parseSupervise(['--restart-code', '4', '--on-crash', '--', 'a', 'b']), { cmd: ['a', 'b'], opts: { restartCode: 4, onCrash: true } })
  const r = spawnSync(process.execPath, [cli, 'supervise'], { encoding: 'utf8', env: env() })
  t.equal(r.status, 2)
})

t.test("reloadable onStuck: 'restart': a build only a new process can take drains and exits 3; under supervise the new process serves it", async t => {
  const dir = t.testdir()
  const src = path.join(root, 'examples', 'echo-host', 'echo.c')
  const build = (v: string): string => {
    const out = path.join(dir, `v${v}.so`)
    execFileSync('cc', ['-O1', '-fPIC', '-shared', '-Wl,-z,nodelete', '-I' + path.join(root, 'csrc', 'include'), `-DPLUGIN_VERSION="${v}"`, '-o', out, src])
    return out
  }
  const v1 = build('1')
  const v2 = build('2')
  const lib = path.join(dir, 'libplugin.so')
  fs.copyFileSync(v1, lib)
  const host = path.join(dir, 'host.js')
  fs.writeFileSync(host, `
    const d = require(${JSON.stringify(dist)})
    const fs = require('fs')
    ;(async () => {
      const p = await d.reloadable(${JSON.stringify(lib)}, null, { watch: false, onStuck: 'restart', isolate: false })
      const v = (await p.call('version')).toString()
      console.log('serving ' + v)
      if (v === '2') return p.close()
      p.on('restart', ev => console.log('restart: ' + ev.reason))
      process.on('exit', code => console.log('exit ' + code))
      const inflight = p.call('answered before exit').then(b => console.log('answered: ' + b))
      fs.copyFileSync(${JSON.stringify(v2)}, ${JSON.stringify(lib)} + '.tmp'); fs.renameSync(${JSON.stringify(lib)} + '.tmp', ${JSON.stringify(lib)})
      await p.reload()
      console.log('not reached')
    })()`)
  // The warning that a NODELETE library cannot be reloaded in process is the point here: silenced.
  const r = spawnSync(process.execPath, [cli, 'supervise', '--', process.execPath, '--disable-warning=DLHOST_UNRELOADABLE', host], { encoding: 'utf8', env: env(), timeout: 30000 })
  t.equal(r.status, 0, r.stderr)
  t.notMatch(r.stderr, /DlhostWarning/, '--disable-warning silences it')
  const lines = r.stdout.trim().split('\n')
  t.same(lines, ['serving 1', 'answered: answered before exit', 'restart: NODELETE: the library can neither coexist with a second copy nor unload', 'exit 3', 'serving 2'])
})
