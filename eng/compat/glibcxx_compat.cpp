// Supplies the three libstdc++ symbols (GCC 13+) that TorchSharp's libLibTorchSharp.so needs, so the
// wrapper loads against an older libstdc++ (Debian 12 / Ubuntu 22.04 ship GCC 12's GLIBCXX_3.4.30).
// Built and linked by eng/TorchCompat.targets only on machines whose libstdc++ lacks GLIBCXX_3.4.32.
#include <exception>
#include <ios>
#include <new>
#include <cstring>
namespace std {
  void ios_base_library_init() { static ios_base::Init init; }
  namespace __exception_ptr {
    void exception_ptr::_M_addref() noexcept {
      alignas(exception_ptr) unsigned char buf[sizeof(exception_ptr)];
      new (buf) exception_ptr(*this); // the copy bumps the count and is never destroyed
    }
    void exception_ptr::_M_release() noexcept {
      alignas(exception_ptr) unsigned char buf[sizeof(exception_ptr)];
      std::memcpy(buf, this, sizeof(exception_ptr)); // alias without bumping the count
      reinterpret_cast<exception_ptr*>(buf)->~exception_ptr(); // drops one reference
    }
  }
}
