#!/usr/bin/env node
'use strict'
// `npm start`: build what the demo needs (quietly unless it fails), then run it.
const { spawnSync } = require('child_process')
const path = require('path')

const root = path.join(__dirname, '..')
const build = spawnSync(process.execPath, [path.join(__dirname, 'build.js')], { cwd: root, encoding: 'utf8' })
if (build.status !== 0) {
  process.stdout.write(build.stdout)
  process.stderr.write(build.stderr)
  process.exit(build.status ?? 1)
}
const demo = spawnSync(process.execPath, [path.join(root, 'examples', 'demo.js'), ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' })
process.exit(demo.status ?? 1)
