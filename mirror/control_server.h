#pragma once
// ControlServer: the local control socket that `nbdmirror status` talks to.
//
// Protocol: the client sends one line (a command, e.g. "status"), the server answers with one
// JSON document and closes. Unix socket only, created 0600 (root's tools talk to root's
// daemon). Commands are looked up in a table the daemon fills in; unknown ones get
// {"error": "..."}.

#include <functional>
#include <map>
#include <string>

#include "base/asio.h"
#include "base/status.h"

namespace mirror {

class ControlServer {
 public:
  using Command = std::function<std::string()>;  // Returns a JSON document.

  ControlServer(asio::io_context& io, std::map<std::string, Command> commands);
  ~ControlServer();
  base::Status Listen(const std::string& path);

 private:
  asio::awaitable<void> AcceptLoop();
  asio::awaitable<void> Serve(asio::local::stream_protocol::socket socket);

  asio::io_context& io_;
  std::map<std::string, Command> commands_;
  asio::local::stream_protocol::acceptor acceptor_;
  std::string path_;
};

// Minimal JSON building for flat status documents.
std::string JsonString(const std::string& text);

// Asks a running daemon: connects to `path`, sends `command`, returns its answer.
base::Result<std::string> QueryControlSocket(const std::string& path, const std::string& command);

std::string DefaultControlPath(const std::string& volume_path);

// The control socket's path from a `--control` value (unix:PATH or PATH; empty: the default
// for `volume_path`). The same for `run`, `status` and `verify`.
std::string ControlSocketPath(const std::string& flag, const std::string& volume_path);

}  // namespace mirror
