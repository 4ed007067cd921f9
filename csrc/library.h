// The library registry: dlopen/dlclose with explicit reference counts.
//
// dlopen handles are process-wide, so the registry is one per process (all
// threads and all Node environments share it) and every method takes its
// mutex. Which *environment* holds which reference is tracked by LibRef
// objects owned by that environment (see addon.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <sys/types.h>
#include <unordered_map>
#include <vector>

namespace dlhost {

// A failure with a stable code (ERR_NOT_FOUND, ERR_DLOPEN, ...) and, when the
// loader produced one, its own message (dlerror()).
struct LoadError {
  std::string code;
  std::string message;
  std::string loader_message;
};

// What a library *is*: the file behind the real path at the time it was opened.
struct Identity {
  std::string real_path;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  std::string Key() const;
};

enum OpenFlags : uint32_t { kPin = 1, kGlobal = 2, kLazy = 4 };

// One identity in the registry. Fields are guarded by Registry::mu_.
struct LibEntry {
  uint64_t serial = 0;
  Identity id;
  void *handle = nullptr;  // null once dlclose'd (or never opened)
  uint64_t refs = 0;       // Library objects (open() calls not yet released)
  uint64_t runtimes = 0;   // runtimes inside it (held until their threads left)
  bool pinned = false;     // never dlclose'd; once set, never cleared
  bool global = false;
  bool dlclosed = false;   // dlclose ran; the entry stays only while still mapped
};

using EntryPtr = std::shared_ptr<LibEntry>;

// The result of dropping a reference.
struct ReleaseResult {
  bool dlclosed = false;  // this release ran dlclose
  bool mapped = false;    // the object is still in the process afterwards
};

struct Row {
  uint64_t serial;
  Identity id;
  uint64_t refs, runtimes;
  bool pinned, mapped, dlclosed;
};

class Registry {
 public:
  static Registry &Get();

  // Opens (or shares) the library at `path`; refs += 1. Throws LoadError.
  EntryPtr Open(const std::string &path, uint32_t flags);
  // Drops one open() reference; dlcloses when nothing holds it and unpinned.
  ReleaseResult Release(const EntryPtr &e);
  // A runtime enters / leaves the library (same closing rule as Release).
  void AcquireRuntime(const EntryPtr &e);
  ReleaseResult ReleaseRuntime(const EntryPtr &e);
  // Resolves a symbol while the library is open; nullptr otherwise.
  void *Symbol(const EntryPtr &e, const char *name);
  // Marks pinned (policy "once pinned, stays pinned").
  void Pin(const EntryPtr &e);

  std::vector<Row> Snapshot();
  Row RowOf(const EntryPtr &e);

  // Is an object loaded from exactly this path in the process? Asked of the
  // loader (dl_iterate_phdr), never inferred from an old pointer.
  static bool IsMapped(const std::string &path);

 private:
  Registry() = default;
  ReleaseResult MaybeClose(const EntryPtr &e);  // mu_ held
  std::mutex mu_;
  uint64_t next_serial_ = 1;
  std::unordered_map<std::string, EntryPtr> by_key_;
};

}  // namespace dlhost
