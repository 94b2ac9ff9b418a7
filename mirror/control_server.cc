#include "mirror/control_server.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

namespace mirror {

using base::Status;

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string DefaultControlPath(const std::string& volume_path) {
  // Beside the volume's metadata; a volume on /dev gets its socket under /run/nbdmirror.
  if (volume_path.rfind("/dev/", 0) == 0) {
    std::string name = volume_path.substr(5);
    for (char& c : name) {
      c = c == '/' ? '_' : c;
    }
    return "/run/nbdmirror/" + name + ".control";
  }
  return volume_path + ".control";
}

std::string ControlSocketPath(const std::string& flag, const std::string& volume_path) {
  if (flag.empty()) {
    return DefaultControlPath(volume_path);
  }
  return flag.rfind("unix:", 0) == 0 ? flag.substr(5) : flag;
}

ControlServer::ControlServer(asio::io_context& io, std::map<std::string, Command> commands)
    : io_(io), commands_(std::move(commands)), acceptor_(io) {}

ControlServer::~ControlServer() {
  if (!path_.empty()) {
    ::unlink(path_.c_str());
  }
}

Status ControlServer::Listen(const std::string& path) {
  std::error_code fs_ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), fs_ec);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::Error(EEXIST, path + " exists and is not a socket");
    }
    ::unlink(path.c_str());
  }
  boost::system::error_code ec;
  const asio::local::stream_protocol::endpoint endpoint(path);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) {
    acceptor_.bind(endpoint, ec);
  }
  if (!ec) {
    acceptor_.listen(16, ec);
  }
  if (ec) {
    return Status::Error(ec.value(), "control socket " + path + ": " + ec.message());
  }
  ::chmod(path.c_str(), 0600);
  path_ = path;
  asio::co_spawn(io_, AcceptLoop(), asio::detached);
  return Status::Ok();
}

asio::awaitable<void> ControlServer::AcceptLoop() {
  for (;;) {
    asio::local::stream_protocol::socket socket(io_);
    boost::system::error_code ec;
    co_await acceptor_.async_accept(socket, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted) {
      co_return;
    }
    if (!ec) {
      asio::co_spawn(io_, Serve(std::move(socket)), asio::detached);
    }
  }
}

asio::awaitable<void> ControlServer::Serve(asio::local::stream_protocol::socket socket) {
  std::string line;
  boost::system::error_code ec;
  co_await asio::async_read_until(socket, asio::dynamic_buffer(line, 1024), '\n',
                                  asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return;
  }
  const std::string command = line.substr(0, line.find('\n'));
  std::string answer;
  auto it = commands_.find(command);
  if (it == commands_.end()) {
    answer = "{\"error\": " + JsonString("unknown command '" + command + "'") + "}";
  } else {
    answer = it->second();
  }
  answer += "\n";
  co_await asio::async_write(socket, asio::buffer(answer),
                             asio::redirect_error(asio::use_awaitable, ec));
}

base::Result<std::string> QueryControlSocket(const std::string& path,
                                             const std::string& command) {
  asio::io_context io;
  asio::local::stream_protocol::socket socket(io);
  boost::system::error_code ec;
  socket.connect(asio::local::stream_protocol::endpoint(path), ec);
  if (ec) {
    return Status::Error(ec.value(), "cannot reach the daemon at " + path + ": " + ec.message() +
                                         " (is `nbdmirror run` running for this volume?)");
  }
  const std::string request = command + "\n";
  asio::write(socket, asio::buffer(request), ec);
  std::string answer;
  asio::read(socket, asio::dynamic_buffer(answer, 1 << 20), ec);
  if (ec && ec != asio::error::eof) {
    return Status::Error(ec.value(), "control socket " + path + ": " + ec.message());
  }
  return answer;
}

}  // namespace mirror
