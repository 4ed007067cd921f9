#!/usr/bin/env node
'use strict'
// `npm run build`: the native addon (incremental), the TypeScript, and the
// native fixtures and examples that tests, demos and benchmarks load.
// DLHOST_SANITIZE=address builds the addon with ASan+UBSan (see asan.js).
const { execFileSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
const bin = (name) => path.join(root, 'node_modules', '.bin', name)
const run = (cmd, args, opts = {}) =>
  execFileSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts })

// Use the headers installed beside this node when there are some: node-gyp
// would otherwise download them, and this machine may have no network.
function nodedirArgs () {
  if (process.env.npm_config_nodedir) return ['--nodedir', process.env.npm_config_nodedir]
  const prefix = path.resolve(path.dirname(process.execPath), '..')
  return fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? ['--nodedir', prefix] : []
}

function buildNative () {
  const flavour = process.env.DLHOST_SANITIZE || 'none'
  const marker = path.join(root, 'build', 'dlhost-flavour')
  // No marker but a Makefile: prebuildify (`npm run prebuilds`) configured
  // a normal build, so make stays incremental.
  const current = fs.existsSync(marker) ? fs.readFileSync(marker, 'utf8') : 'none'
  const configured = fs.existsSync(path.join(root, 'build', 'Makefile')) && current === flavour
  if (!configured) run(bin('node-gyp'), ['configure', ...nodedirArgs()])
  run(bin('node-gyp'), ['build', '--jobs', 'max'])
  fs.writeFileSync(marker, flavour)
}

function makeIn (dir) {
  if (fs.existsSync(path.join(root, dir, 'Makefile'))) run('make', ['-s', '-C', dir, '-j2'])
}

const only = process.argv[2]
if (!only || only === 'native') buildNative()
if (!only || only === 'ts') run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'])
if (!only || only === 'native-tests') { makeIn('test/fixtures'); makeIn('examples') }
