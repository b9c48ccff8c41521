defmodule Functions.HttpPolicyTest do
  # Where functions may send requests: public addresses only, unless the
  # caller allow-lists a host; checked on resolved addresses and redirects.
  use ExUnit.Case, async: true
  @moduletag :capture_log

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime
  alias Worker.Test.HttpServer

  @refused {:ok, %{"status" => 0, "body" => ""}}

  setup do
    base = HttpServer.start!()
    %{port: URI.parse(base).port, http: compile!("http")}
  end

  # Each spelling of a loopback or otherwise non-public address is refused
  # before any connection: the server on loopback never hears of it.
  for {label, url} <- HttpServer.non_public_urls() do
    test "refuses #{label}", %{port: port, http: http} do
      url = String.replace(unquote(url), "PORT", Integer.to_string(port))

      log =
        capture_log(fn ->
          assert Runtime.invoke(http, %{url: url}, timeout: 5_000) == @refused
        end)

      assert log =~ "not public" or log =~ "no public address"
      refute_received {:http_request, _}
    end
  end

  test "an allow-listed host is reachable; by host and port too", %{port: port, http: http} do
    url = "http://127.0.0.1:#{port}/text/allowed"
    ok = {:ok, %{"status" => 200, "body" => "allowed"}}
    assert Runtime.invoke(http, %{url: url}, http_allow: ["127.0.0.1"]) == ok
    assert Runtime.invoke(http, %{url: url}, http_allow: ["127.0.0.1:#{port}"]) == ok
    assert Runtime.invoke(http, %{url: url}, http_allow: ["127.0.0.1:#{port + 1}"]) == @refused
    # a name on the list may resolve to a private address
    assert Runtime.invoke(http, %{url: "http://localhost:#{port}/text/allowed"},
             http_allow: ["localhost"]
           ) ==
             ok
  end

  test "every redirect target is checked like the first URL", %{port: port, http: http} do
    other = HttpServer.start!()
    target = URI.encode_www_form(other <> "/text/should-not-arrive")
    url = "http://127.0.0.1:#{port}/goto/#{target}"

    log =
      capture_log(fn ->
        assert Runtime.invoke(http, %{url: url}, http_allow: ["127.0.0.1:#{port}"]) == @refused
      end)

    assert log =~ "redirect refused"
    assert_received {:http_request, %{path: "/goto/" <> _}}
    refute_received {:http_request, %{path: "/text/should-not-arrive"}}

    # allowed, the same redirect is followed
    other_port = URI.parse(other).port

    assert Runtime.invoke(http, %{url: url},
             http_allow: ["127.0.0.1:#{port}", "127.0.0.1:#{other_port}"]
           ) ==
             {:ok, %{"status" => 200, "body" => "should-not-arrive"}}
  end

  test "bad allow-list entries are refused before the function runs", %{http: http} do
    # a bad option, like every other: it raises
    error =
      assert_raise ArgumentError, fn -> Runtime.invoke(http, %{}, http_allow: ["host:port"]) end

    assert error.message =~ "http_allow"
    refute_received {:http_request, _}
    assert_raise ArgumentError, fn -> Runtime.invoke(http, %{}, http_allow: "127.0.0.1") end
  end

  test "the default allow-list comes from the :http_allow setting (FL_HTTP_ALLOW)", %{
    port: port,
    http: http
  } do
    assert Worker.Config.from_env(%{"FL_HTTP_ALLOW" => "127.0.0.1:8080, [::1]"})[:http_allow] ==
             ["127.0.0.1:8080", "[::1]"]

    url = "http://127.0.0.1:#{port}/text/by-default"
    assert Runtime.invoke(http, %{url: url}) == @refused

    # only this test's server is allowed: other tests' servers have other ports
    previous = Application.fetch_env!(:worker, :http_allow)
    on_exit(fn -> Worker.Config.put(:http_allow, previous) end)
    :ok = Worker.Config.put(:http_allow, ["127.0.0.1:#{port}"])

    assert Runtime.invoke(http, %{url: url}) == {:ok, %{"status" => 200, "body" => "by-default"}}
    assert_received {:http_request, %{path: "/text/by-default"}}
    # an option still replaces the default
    assert Runtime.invoke(http, %{url: url}, http_allow: []) == @refused
  end
end
