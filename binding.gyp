{
  "variables": {
    # DLHOST_SANITIZE=address|thread|none picks a sanitizer build (npm run test:asan).
    "dlhost_sanitize%": "<!(node -p \"process.env.DLHOST_SANITIZE || 'none'\")"
  },
  "targets": [
    {
      "target_name": "dlhost",
      "sources": [
        "csrc/addon.cc",
        "csrc/registry.cc",
        "csrc/owner_thread.cc",
        "csrc/library_wrap.cc",
        "csrc/js_util.cc",
        "csrc/runtime_core.cc",
        "csrc/runtime_wrap.cc",
        "csrc/completions.cc",
        "csrc/messages.cc",
        "csrc/streams.cc",
        "csrc/channel_wrap.cc",
        "csrc/host_abi.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "csrc/include"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_CPP_EXCEPTIONS_ALL",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-fvisibility=hidden", "-fno-gnu-unique", "-O2"],
      "libraries": ["-ldl", "-lpthread"],
      "conditions": [
        ["dlhost_sanitize=='address'", {
          "cflags": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"],
          "ldflags": ["-fsanitize=address,undefined"]
        }]
      ]
    },
    {
      # The child process of an isolated runtime, and of a probe load: the
      # same registry and runtime core, no N-API (csrc/child/host_main.cc).
      "target_name": "dlhost-host",
      "type": "executable",
      "sources": [
        "csrc/child/host_main.cc",
        "csrc/registry.cc",
        "csrc/owner_thread.cc",
        "csrc/runtime_core.cc",
        "csrc/host_abi.cc"
      ],
      "include_dirs": ["csrc/include"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-fno-gnu-unique", "-O2"],
      # Plugins resolve the host ABI by name from the executable.
      "ldflags": ["-Wl,--export-dynamic"],
      "libraries": ["-ldl", "-lpthread"],
      "conditions": [
        ["dlhost_sanitize=='address'", {
          "cflags": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"],
          "ldflags": ["-fsanitize=address,undefined"]
        }]
      ]
    }
  ]
}
