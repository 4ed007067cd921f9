// owner_thread.h: the one thread that owns a loaded library. Any thread.
//
// A library's dlopen, every plugin init and close, and its final dlclose run
// on this thread, which lives exactly as long as the library is loaded. An
// embedded language runtime takes the thread its init ran on as its main
// thread (CPython does at Py_Initialize), and finalizing it after that thread
// died waits for ever; thread_local destructors registered there run when
// the thread exits, before the unmapping is verified. Init never runs on the
// JS thread, so it never freezes the event loop.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace dlhost {

class OwnerThread {
 public:
  // Starts the thread. Throws std::system_error when none can be made.
  OwnerThread();
  ~OwnerThread();  // never called while the thread runs (see Finish)
  OwnerThread(const OwnerThread &) = delete;
  OwnerThread &operator=(const OwnerThread &) = delete;

  // Queues fn; returns at once. Tasks run in order.
  void Post(std::function<void()> fn);
  // Runs fn on the owner thread and waits for it. From the owner thread
  // itself, runs it inline.
  void Run(const std::function<void()> &fn);
  // Runs fn (the dlclose) after every queued task, then lets the thread exit
  // and joins it, so its thread_local destructors have run on return. Not
  // from the owner thread.
  void Finish(std::function<void()> fn);
  bool OnOwner() const { return std::this_thread::get_id() == id_; }

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool finishing_ = false;
  std::thread thread_;
  std::thread::id id_;
};

}  // namespace dlhost
