#!/usr/bin/env node
'use strict'
// Packaging check (run by .ci/run), a consumer's first hour:
// `npm pack` (prepack makes the prebuild when it is missing or stale), then
// the tarball is installed into empty projects, once the default way (npm
// runs the install script: node-gyp-build finds the prebuild, compiles
// nothing) and once with --ignore-scripts; each loads the addon from
// prebuilds/ with no build/ directory, starts an isolated runtime, and
// compiles test/types/consumer.mts with `tsc --init`'s config under
// TypeScript 7 (the default) and 5.
const { execFileSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')

const root = path.join(__dirname, '..')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
const platform = `${process.platform}-${process.arch}`
const quiet = ['--no-audit', '--no-fund', '--loglevel=error']

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-pack-'))
try {
  const out = execFileSync(npm, ['pack', '--pack-destination', tmp], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n').pop()
  const tarball = path.join(tmp, out)
  const files = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' })
  for (const must of ['package/dist/index.js', 'package/dist/index.d.ts', 'package/dist/index.js.map', 'package/csrc/include/dlhost.h', 'package/binding.gyp', 'package/LICENSE',
    `package/prebuilds/${platform}/dlhost.node`, `package/prebuilds/${platform}/dlhost-host`]) {
    if (!files.split('\n').includes(must)) throw new Error(`the package lacks ${must}`)
  }
  if (/package\/(build|node_modules|test)\//.test(files)) throw new Error('the package carries build/, node_modules/ or test/')
  // Source maps carry their sources (inlineSources): no map points at a file the package lacks.
  const map = JSON.parse(execFileSync('tar', ['-xzOf', tarball, 'package/dist/index.js.map'], { encoding: 'utf8' }))
  if (!Array.isArray(map.sourcesContent) || map.sourcesContent.length !== map.sources.length) throw new Error('dist/index.js.map lacks its sources')

  const echo = path.join(root, 'examples', 'out', 'libecho_host.so')
  const consumer = path.join(root, 'test', 'types', 'consumer.mts')
  for (const { name, scripts, ts } of [
    { name: 'default', scripts: true, ts: 'typescript@7' },
    { name: 'ignore-scripts', scripts: false, ts: 'typescript@5' }
  ]) {
    const app = path.join(tmp, name)
    fs.mkdirSync(app)
    fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","version":"1.0.0","private":true}')
    const log = execFileSync(npm, ['install', ...quiet, '--foreground-scripts', ...(scripts ? [] : ['--ignore-scripts']), tarball, ts, '@types/node'], { cwd: app, encoding: 'utf8' })
    const ranInstall = log.includes('node-gyp-build')
    if (ranInstall !== scripts) throw new Error(`${name}: the install script ${ranInstall ? 'ran' : 'did not run'}:\n${log}`)
    const pkg = path.join(app, 'node_modules', 'dlhost')
    if (fs.existsSync(path.join(pkg, 'build'))) throw new Error(`${name}: a build/ directory appeared in the installed package`)
    const probe = `const d = require('dlhost'); const b = require('node-gyp-build').path(${JSON.stringify(pkg)}); if (!b.includes('prebuilds')) throw new Error('loaded ' + b)
      d.load(${JSON.stringify(echo)}, null, { isolate: 'process' }).then(async rt => { console.log('${name}: abi', d.abiVersion, 'from prebuilds/, isolated call:', (await rt.call('ok')).toString()); await rt.unload() })`
    execFileSync(process.execPath, ['-e', probe], { cwd: app, stdio: 'inherit' })
    const esm = 'import { abiVersion, load } from "dlhost"; if (typeof abiVersion !== "number" || typeof load !== "function") throw new Error("named ESM imports")'
    execFileSync(process.execPath, ['--input-type=module', '-e', esm], { cwd: app, stdio: 'inherit' })
    // The consumer's own config, as `tsc --init` writes it, and the type test.
    const tsc = path.join(app, 'node_modules', '.bin', 'tsc')
    execFileSync(tsc, ['--init'], { cwd: app, stdio: 'ignore' })
    fs.copyFileSync(consumer, path.join(app, 'consumer.mts'))
    const version = execFileSync(tsc, ['--version'], { cwd: app, encoding: 'utf8' }).trim()
    execFileSync(tsc, ['--noEmit'], { cwd: app, stdio: 'inherit' })
    execFileSync(tsc, ['--noEmit', '--skipLibCheck', 'false'], { cwd: app, stdio: 'inherit' })
    console.log(`${name}: ${version}: consumer.mts compiles (with and without skipLibCheck)`)
  }
  console.log('pack check: ok')
} finally {
  fs.rmSync(tmp, { recursive: true, force: true })
}
