#pragma once
// The one place that includes Boost.Asio. Boost 1.74's awaitable.hpp uses std::exchange
// without including <utility>, so include it first. Code uses the short alias `asio`.

#include <utility>

#include <boost/asio.hpp>

namespace asio = boost::asio;
