// owner_thread.cc: see owner_thread.h. Any thread.
#include "owner_thread.h"

namespace dlhost {

OwnerThread::OwnerThread() {
  thread_ = std::thread([this] { Loop(); });
  id_ = thread_.get_id();
}

OwnerThread::~OwnerThread() {
  if (thread_.joinable()) thread_.detach();  // only if Finish never ran (process exit)
}

void OwnerThread::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return !tasks_.empty() || finishing_; });
    if (tasks_.empty()) return;  // finishing, nothing left
    std::function<void()> fn = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    try {
      fn();
    } catch (...) {
      // Tasks report their own failures; nothing may end this thread early.
    }
    lock.lock();
  }
}

void OwnerThread::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(fn));
  }
  cv_.notify_one();
}

void OwnerThread::Run(const std::function<void()> &fn) {
  if (OnOwner()) {
    fn();
    return;
  }
  std::mutex done_mu;
  std::condition_variable done_cv;
  bool done = false;
  Post([&] {
    fn();
    std::lock_guard<std::mutex> lock(done_mu);
    done = true;
    done_cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(done_mu);
  done_cv.wait(lock, [&] { return done; });
}

void OwnerThread::Finish(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(fn));
    finishing_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

}  // namespace dlhost
