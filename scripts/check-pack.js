#!/usr/bin/env node
'use strict'
// Packaging check (run by .ci/run): `npm pack`, install the tarball into an
// empty project the way a consumer does (npm blocks dependency install
// scripts, so nothing compiles there), and load the addon from prebuilds/
// with no build/ directory in sight.
const { execFileSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')

const root = path.join(__dirname, '..')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
const prebuilt = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`)
if (!fs.existsSync(prebuilt) || fs.readdirSync(prebuilt).length === 0) {
  console.error(`no prebuild in ${prebuilt}: run npm run prebuild first`)
  process.exit(1)
}
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-pack-'))
try {
  const out = execFileSync(npm, ['pack', '--silent', '--pack-destination', tmp], { cwd: root, encoding: 'utf8' }).trim().split('\n').pop()
  const tarball = path.join(tmp, out)
  const files = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' })
  for (const must of ['package/dist/index.js', 'package/dist/index.d.ts', 'package/csrc/include/dlhost.h', 'package/binding.gyp', `package/prebuilds/${process.platform}-${process.arch}/`, `package/prebuilds/${process.platform}-${process.arch}/dlhost-host`]) {
    if (!files.includes(must)) throw new Error(`the package lacks ${must}`)
  }
  if (/package\/(build|node_modules|test)\//.test(files)) throw new Error('the package carries build/, node_modules/ or test/')
  const app = path.join(tmp, 'app')
  fs.mkdirSync(app)
  fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","version":"1.0.0","private":true}')
  execFileSync(npm, ['install', '--no-audit', '--no-fund', '--ignore-scripts', tarball], { cwd: app, stdio: 'inherit' })
  const pkg = path.join(app, 'node_modules', 'dlhost')
  if (fs.existsSync(path.join(pkg, 'build'))) throw new Error('a build/ directory appeared in the installed package')
  const echo = path.join(root, 'examples', 'out', 'libecho_host.so')
  const probe = `const d = require('dlhost'); const b = require('node-gyp-build').path(${JSON.stringify(pkg)}); if (!b.includes('prebuilds')) throw new Error('loaded ' + b); console.log('abi', d.abiVersion, 'from', b)
    d.load(${JSON.stringify(echo)}, null, { isolate: 'process' }).then(async rt => { console.log('isolated:', (await rt.call('ok')).toString()); await rt.unload() })`
  execFileSync(process.execPath, ['-e', probe], { cwd: app, stdio: 'inherit' })
  console.log('pack check: ok')
} finally {
  fs.rmSync(tmp, { recursive: true, force: true })
}
