// inspect() verdicts on real libraries, its errors, and the `dlhost` CLI
// (in process through main(), and as a real `node cli.js` process).
import t, { Test } from 'tap'
import { execFileSync, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { inspect, InspectReport } from '../lib/inspect'
import { hostElf } from '../lib/rules'
import { main, CliIo } from '../lib/cli'

const ROOT = path.join(__dirname, '..')
const OUT = path.join(__dirname, 'fixtures', 'out')
const fx = (name: string): string => path.join(OUT, name)
const HOST_MACHINE = hostElf().machineName

function goFixture (t: Test): string | undefined {
  const f = fx('goplugin.so')
  if (fs.existsSync(f)) return f
  if (spawnSync('go', ['version'], { stdio: 'ignore' }).status !== 0) {
    t.plan(0, 'go is not installed: no Go c-shared fixture')
    return undefined
  }
  t.fail('go is installed but test/fixtures/out/goplugin.so was not built (run make -C test/fixtures)')
  return undefined
}

// readelf warns about Go's symbol tables on stderr; only its output is the truth here.
function readelfFlags1 (file: string): string {
  return /\(FLAGS_1\)\s+Flags:\s*(.*)/.exec(execFileSync('readelf', ['-dW', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, LC_ALL: 'C' } }))?.[1] ?? ''
}

/** Builds a tiny shared library from C source in `dir`. */
function cc (dir: string, name: string, source: string, extra: string[] = []): string {
  const src = path.join(dir, name + '.c')
  const out = path.join(dir, name + '.so')
  fs.writeFileSync(src, source)
  execFileSync(process.env.CC ?? 'cc', ['-O1', '-fPIC', '-shared', ...extra, '-o', out, src])
  return out
}

t.test('verdicts', async t => {
  await t.test('clean C library: unloadable, coexists', async t => {
    const r = await inspect(fx('plain.so'))
    t.match(r, {
      path: fx('plain.so'),
      unloadable: true,
      verdict: 'unloadable',
      reasons: [],
      warnings: [],
      abi: null,
      entry: null,
      nodelete: false,
      gnuUnique: [],
      tls: false,
      threadAtexit: false,
      goRuntime: false,
      machine: HOST_MACHINE,
      canCoexist: true,
      coexistBlockers: [],
      loadable: true,
      autoStrategy: 'shadow'
    })
    t.same(r.exports, ['plain_answer', 'plain_name'])
    t.equal(r.loadError, undefined)
  })

  await t.test('NODELETE: not unloadable', async t => {
    const r = await inspect(fx('nodelete.so'))
    t.match(readelfFlags1(fx('nodelete.so')), /NODELETE/, 'readelf sees DF_1_NODELETE')
    t.match(r, { unloadable: false, verdict: 'stuck', reasons: ['NODELETE'], nodelete: true, canCoexist: true, autoStrategy: 'restart' })
  })

  await t.test('GNU_UNIQUE: not unloadable, cannot coexist', async t => {
    const r = await inspect(fx('unique.so'))
    t.match(r, { unloadable: false, verdict: 'stuck', reasons: ['GNU_UNIQUE'], gnuUnique: ['_ZZ7countervE1c'], canCoexist: false, coexistBlockers: ['GNU_UNIQUE'] })
  })

  await t.test('thread_local destructors: conditionally unloadable', async t => {
    const r = await inspect(fx('tls.so'))
    t.match(r, {
      unloadable: true,
      verdict: 'conditional',
      reasons: ['TLS destructors pending'],
      warnings: ['TLS destructors pending'],
      tls: true,
      threadAtexit: true,
      canCoexist: true,
      autoStrategy: 'shadow'
    })
    t.ok(r.needed.some(n => n.startsWith('libstdc++')))
  })

  await t.test('Go c-shared: not unloadable, one per process', async t => {
    const file = goFixture(t)
    if (file === undefined) return
    const r = await inspect(file)
    t.equal(r.unloadable, false)
    t.equal(r.verdict, 'stuck')
    t.ok(r.reasons.includes('Go runtime'))
    t.equal(r.reasons[r.reasons.length - 1], 'Go runtime', 'Go runtime comes last')
    t.equal(r.nodelete, /NODELETE/.test(readelfFlags1(file)), 'NODELETE as readelf says (Go links with -z nodelete)')
    t.equal(r.goRuntime, true)
    t.equal(r.canCoexist, false)
    t.ok(r.coexistBlockers.includes('Go runtime'))
    t.equal(r.abi, 'host')
    t.equal(r.entry, 'dlhost_handle')
    t.equal(r.autoStrategy, 'restart')
  })

  await t.test('the plugin ABI by entry symbol', async t => {
    const dir = t.testdir({})
    const native = cc(dir, 'native', `
      #include <stddef.h>
      int dlhost_init(const char *cfg, size_t len, void *q) { (void)cfg; (void)len; (void)q; return 0; }
      int dlhost_handle(void *s, const void *r, size_t l, void **o, size_t *ol) { (void)s; (void)r; (void)l; *o = 0; *ol = 0; return 0; }`)
    const host = cc(dir, 'host', `
      #include <stddef.h>
      void *dlhost_open(const char *cfg, size_t len) { (void)cfg; (void)len; return 0; }
      int dlhost_handle(void *s, const void *r, size_t l, void **o, size_t *ol) { (void)s; (void)r; (void)l; *o = 0; *ol = 0; return 0; }
      int libffi_init(char *cfg, void *tq) { (void)cfg; (void)tq; return 0; }`)
    const lua = cc(dir, 'lua', 'int libffi_init(char *cfg, void *tq) { (void)cfg; (void)tq; return 0; }')
    const hidden = cc(dir, 'hidden', '__attribute__((visibility("hidden"))) int dlhost_init(void) { return 0; }\nint other(void) { return dlhost_init(); }')
    t.match(await inspect(native), { abi: 'native', entry: 'dlhost_init' })
    t.match(await inspect(host), { abi: 'host', entry: 'dlhost_handle' })
    t.match(await inspect(lua), { abi: 'lua-resty-ffi', entry: 'libffi_init' })
    t.match(await inspect(hidden), { abi: null, entry: null }, 'a hidden symbol is no entry')
    // Relinking plain C with -z nodelete flips the verdict: the linker flag, not the code, decides.
    const nd = cc(dir, 'nd', 'int f(void) { return 1; }', ['-Wl,-z,nodelete'])
    t.match(await inspect(nd), { unloadable: false, reasons: ['NODELETE'] })
  })

  await t.test('another machine: diagnosed, but not loadable here', async t => {
    const dir = t.testdir({})
    const b = fs.readFileSync(fx('nodelete.so'))
    const foreign = hostElf().machine === 183 ? 62 : 183
    b.writeUInt16LE(foreign, 18)
    const file = path.join(dir, 'foreign.so')
    fs.writeFileSync(file, b)
    const r = await inspect(file)
    t.equal(r.machine, foreign === 183 ? 'AArch64' : 'x86-64')
    t.equal(r.loadable, false)
    t.match(r.loadError, { code: 'ERR_WRONG_ARCH' })
    t.same(r.reasons, ['NODELETE'], 'the verdict does not depend on the machine')
  })
})

t.test('errors', async t => {
  const dir = t.testdir({ 'notes.txt': 'hello\n', 'empty.so': '', sub: {} })
  await t.rejects(inspect(path.join(dir, 'missing.so')), { name: 'DlhostError', code: 'ERR_NOT_FOUND', path: path.join(dir, 'missing.so') })
  await t.rejects(inspect(path.join(dir, 'sub')), { code: 'ERR_IS_DIRECTORY' })
  await t.rejects(inspect(path.join(dir, 'notes.txt')), { code: 'ERR_NOT_ELF' })
  await t.rejects(inspect(path.join(dir, 'empty.so')), { code: 'ERR_NOT_ELF' })
  for (const bad of [42, null, undefined, {}, Buffer.from('x')]) {
    await t.rejects(inspect(bad as unknown as string), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, `path ${String(bad)}`)
  }
  // Truncated at several points.
  const full = fs.readFileSync(fx('tls.so'))
  for (const len of [30, 100, full.length >> 1, full.length - 1]) {
    const f = path.join(dir, `cut-${len}.so`)
    fs.writeFileSync(f, full.subarray(0, len))
    await t.rejects(inspect(f), { code: 'ERR_NOT_ELF' }, `cut at ${len}`)
  }
  // A relocatable object is ELF but not a shared object.
  fs.writeFileSync(path.join(dir, 'obj.c'), 'int f(void) { return 1; }\n')
  execFileSync(process.env.CC ?? 'cc', ['-c', '-o', path.join(dir, 'obj.o'), path.join(dir, 'obj.c')])
  await t.rejects(inspect(path.join(dir, 'obj.o')), { code: 'ERR_NOT_ELF', message: /ET_REL/ })
  if (process.getuid?.() === 0) {
    t.comment('running as root: permission bits cannot make a file unreadable, ERR_ACCESS not tested')
  } else {
    const locked = path.join(dir, 'locked.so')
    fs.copyFileSync(fx('plain.so'), locked)
    fs.chmodSync(locked, 0)
    await t.rejects(inspect(locked), { code: 'ERR_ACCESS' })
  }
})

// ─── the CLI ───────────────────────────────────────────────────────────────

interface Run { code: number, out: string, err: string }

async function cli (...argv: string[]): Promise<Run> {
  let out = ''
  let err = ''
  const io: CliIo = { out: s => { out += s }, err: s => { err += s } }
  const code = await main(argv, io)
  return { code, out, err }
}

t.test('CLI in process', async t => {
  const plain = await cli('inspect', fx('plain.so'))
  t.equal(plain.code, 3, 'can unload, but not a plugin: not the good exit')
  t.match(plain.out, /^.*plain\.so: CAN UNLOAD: .*\n.*plain\.so: NOT A PLUGIN: it exports no entry/)
  const echo = await cli('inspect', path.join(ROOT, 'examples', 'out', 'libecho_native.so'))
  t.equal(echo.code, 0, 'a plugin that can unload')
  t.match(echo.out, /: CAN UNLOAD: /)
  t.notMatch(echo.out, /NOT A PLUGIN/)
  t.match(echo.out, /abi:\s+native \(plugin-driven; entry dlhost_init\)/)
  t.notMatch(echo.out, /native \(native/)
  t.match(plain.out, new RegExp(`machine:\\s+${HOST_MACHINE.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&')}`))
  t.match(plain.out, /abi:\s+none/)
  t.equal(plain.err, '')

  const nd = await cli('inspect', fx('nodelete.so'))
  t.equal(nd.code, 1)
  t.match(nd.out, /STAYS LOADED: dlclose will leave it mapped/)
  t.match(nd.out, /NODELETE\s+linked with -z nodelete/)

  const un = await cli('inspect', fx('unique.so'))
  t.equal(un.code, 1)
  t.match(un.out, /GNU_UNIQUE\s+g\+\+ emitted STB_GNU_UNIQUE/)
  t.match(un.out, /-fno-gnu-unique/)
  t.match(un.out, /_ZZ7countervE1c/)
  t.match(un.out, /coexist:\s+no/)

  const tls = await cli('inspect', fx('tls.so'))
  t.equal(tls.code, 3, 'conditionally unloadable, not a plugin')
  t.match(tls.out, /CAN UNLOAD \(conditionally\)/)
  t.match(tls.out, /warnings:\n\s+TLS destructors pending\s+thread_local/)

  const json = await cli('inspect', '--json', fx('unique.so'))
  t.equal(json.code, 1)
  const parsed = JSON.parse(json.out) as InspectReport
  t.same(parsed, JSON.parse(JSON.stringify(await inspect(fx('unique.so')))), '--json is the inspect() report')

  const after = await cli('inspect', fx('plain.so'), '--json')
  t.equal((JSON.parse(after.out) as InspectReport).verdict, 'unloadable', '--json after the file')

  const missing = await cli('inspect', '/nonexistent/lib.so')
  t.equal(missing.code, 2)
  t.match(missing.err, /ERR_NOT_FOUND/)
  const missingJson = await cli('inspect', '--json', '/nonexistent/lib.so')
  t.equal(missingJson.code, 2)
  t.match(JSON.parse(missingJson.out), { error: { code: 'ERR_NOT_FOUND', path: '/nonexistent/lib.so' } })
  const notElf = await cli('inspect', path.join(ROOT, 'package.json'))
  t.equal(notElf.code, 2)
  t.match(notElf.err, /ERR_NOT_ELF/)
  const dir = await cli('inspect', OUT)
  t.equal(dir.code, 2)
  t.match(dir.err, /ERR_IS_DIRECTORY/)

  const go = fx('goplugin.so')
  if (fs.existsSync(go)) {
    const r = await cli('inspect', go)
    t.equal(r.code, 1)
    t.match(r.out, /Go runtime\s+contains a Go runtime/)
    t.match(r.out, /abi:\s+host/)
  }

  // Usage errors.
  for (const argv of [[], ['inspect'], ['inspect', 'a', 'b'], ['inspect', '--bogus', fx('plain.so')], ['frobnicate']]) {
    const r = await cli(...argv)
    t.equal(r.code, 2, `usage error: ${JSON.stringify(argv)}`)
    t.match(r.err, /Usage: dlhost/)
    t.equal(r.out, '')
  }
  const help = await cli('--help')
  t.equal(help.code, 0)
  t.match(help.out, /Usage: dlhost <command>/)
  t.match(help.out, /inspect FILE/)
  const ihelp = await cli('inspect', '--help')
  t.equal(ihelp.code, 0)
  t.match(ihelp.out, /--json/)
  const version = await cli('--version')
  t.equal(version.code, 0)
  t.equal(version.out.trim(), (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version)
  // `--` ends the options.
  const dd = await cli('inspect', '--', fx('plain.so'))
  t.equal(dd.code, 3)
})

/**
 * The compiled CLI: dist/cli.js when it is at least as new as its sources
 * (npm test builds it first), else a private tsc build of lib/cli.ts.
 */
function compiledCli (t: Test): string {
  const dist = path.join(ROOT, 'dist', 'cli.js')
  const sources = ['cli', 'inspect', 'elf', 'errors'].map(n => path.join(ROOT, 'lib', n + '.ts'))
  if (fs.existsSync(dist)) {
    const built = fs.statSync(dist).mtimeMs
    const fresh = sources.every(s => fs.statSync(s).mtimeMs <= built && fs.existsSync(path.join(ROOT, 'dist', path.basename(s, '.ts') + '.js')))
    if (fresh) return dist
  }
  const dir = t.testdir({})
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  spawnSync(process.execPath, [tsc, path.join(ROOT, 'lib', 'cli.ts'), '--rootDir', path.join(ROOT, 'lib'), '--outDir', path.join(dir, 'lib'),
    '--module', 'commonjs', '--target', 'es2022', '--strict', '--types', 'node', '--skipLibCheck', '--esModuleInterop'], { cwd: ROOT, stdio: 'inherit' })
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'))
  return path.join(dir, 'lib', 'cli.js')
}

t.test('CLI as a process', async t => {
  const js = compiledCli(t)
  t.ok(fs.existsSync(js), `compiled CLI at ${js}`)
  t.equal(fs.readFileSync(js, 'utf8').split('\n')[0], '#!/usr/bin/env node', 'starts with the shebang')
  const run = (...args: string[]): { status: number | null, stdout: string, stderr: string } =>
    spawnSync(process.execPath, [js, ...args], { encoding: 'utf8', timeout: 30000 })

  const plain = run('inspect', fx('plain.so'))
  t.equal(plain.status, 3)
  t.match(plain.stdout, /CAN UNLOAD/)
  const nd = run('inspect', fx('nodelete.so'))
  t.equal(nd.status, 1)
  t.match(nd.stdout, /NODELETE/)
  const json = run('inspect', '--json', fx('tls.so'))
  t.equal(json.status, 3)
  t.match(JSON.parse(json.stdout), { verdict: 'conditional', reasons: ['TLS destructors pending'] })
  const missing = run('inspect', '/nonexistent.so')
  t.equal(missing.status, 2)
  t.match(missing.stderr, /ERR_NOT_FOUND/)
  const usage = run()
  t.equal(usage.status, 2)
  t.match(usage.stderr, /Usage/)
  const help = run('--help')
  t.equal(help.status, 0)
  // A closed pipe is not a crash.
  const piped = spawnSync('sh', ['-c', `"${process.execPath}" "${js}" inspect "${fx('plain.so')}" | head -c 1 >/dev/null`], { encoding: 'utf8' })
  t.equal(piped.status, 0)
  t.notMatch(piped.stderr, /Error|EPIPE/)
})
