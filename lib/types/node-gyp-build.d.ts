declare module 'node-gyp-build' {
  /** Loads the native addon of the package at `dir`. */
  function load (dir: string): unknown
  export = load
}
