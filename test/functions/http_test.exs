defmodule Functions.HttpTest do
  # Outbound HTTP from a function, against a server on loopback.
  use ExUnit.Case, async: true
  @moduletag :capture_log

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime
  alias Worker.Test.HttpServer

  setup do
    base = HttpServer.start!()
    # the server is on loopback, which functions may only reach when allowed
    %{
      base: base,
      http: compile!("http"),
      allow: [URI.parse(base).host <> ":#{URI.parse(base).port}"]
    }
  end

  defp invoke(module, args, allow, opts \\ []),
    do: Runtime.invoke(module, args, [http_allow: allow] ++ opts)

  test "GET returns the status and body", %{base: base, http: http, allow: allow} do
    assert invoke(http, %{url: base <> "/text/hi%20there"}, allow) ==
             {:ok, %{"status" => 200, "body" => "hi there"}}

    assert_received {:http_request, %{method: "GET", path: "/text/hi%20there"}}
  end

  test "a connection is kept for the next request, of any invocation under the same " <>
         "allow-list, and never shared with another",
       %{base: base, http: http, allow: allow} do
    conn = fn allow ->
      assert {:ok, %{"status" => 200, "body" => port}} =
               invoke(http, %{url: base <> "/conn"}, allow)

      port
    end

    first = conn.(allow)
    assert conn.(allow) == first
    # the same server allowed by a list of its own: another connection
    other = conn.(allow ++ ["example.com"])
    assert other != first
    assert conn.(allow ++ ["example.com"]) == other
  end

  test "each method is sent as the ABI's code says", %{base: base, http: http, allow: allow} do
    for method <- ~w(GET POST PUT DELETE) do
      assert {:ok, %{"status" => 200}} =
               invoke(http, %{url: base <> "/echo", method: method}, allow)

      assert_received {:http_request, %{method: ^method}}
    end
  end

  test "headers and body reach the server", %{base: base, http: http, allow: allow} do
    args = %{
      url: base <> "/echo",
      method: "POST",
      headers: %{"X-Trace" => "abc:def", "Content-Type" => "application/json"},
      body: ~s({"k":1})
    }

    assert {:ok, %{"status" => 200, "body" => body}} = invoke(http, args, allow)
    assert_received {:http_request, request}
    # split at the first colon only
    assert request.headers["x-trace"] == "abc:def"
    assert request.headers["content-type"] == "application/json"
    assert request.body == ~s({"k":1})
    assert body =~ ~s("method":"POST")
  end

  test "the status is passed through, not treated as a failure", %{
    base: base,
    http: http,
    allow: allow
  } do
    assert invoke(http, %{url: base <> "/status/404"}, allow) ==
             {:ok, %{"status" => 404, "body" => ""}}
  end

  test "the length written is in bytes, so multi-byte bodies arrive whole", %{
    base: base,
    http: http,
    allow: allow
  } do
    assert invoke(http, %{url: base <> "/unicode"}, allow) ==
             {:ok, %{"status" => 200, "body" => "héllo wörld ✓"}}
  end

  test "redirects are followed", %{base: base, http: http, allow: allow} do
    assert invoke(http, %{url: base <> "/redirect"}, allow) ==
             {:ok, %{"status" => 200, "body" => "redirected"}}
  end

  test "up to 5 redirects are followed; a sixth is refused", %{
    base: base,
    http: http,
    allow: allow
  } do
    assert invoke(http, %{url: base <> "/hops/5"}, allow) ==
             {:ok, %{"status" => 200, "body" => "arrived"}}

    log =
      capture_log(fn ->
        assert {{:ok, %{"status" => 0, "body" => ""}}, stats} =
                 Runtime.invoke_with_stats(http, %{url: base <> "/hops/6"}, http_allow: allow)

        send(self(), {:stats, stats})
      end)

    assert log =~ "more than 5 redirects"
    assert_received {:stats, %Runtime.Stats{http_refused: 1, http_failed: 0}}
  end

  test "a failed request gives status 0 and an empty body, and is logged", %{
    http: http,
    allow: allow
  } do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)

    log =
      capture_log(fn ->
        assert invoke(http, %{url: "http://127.0.0.1:#{port}/nobody-home"}, allow) ==
                 {:ok, %{"status" => 0, "body" => ""}}
      end)

    assert log =~ "http request failed"
    assert log =~ "/nobody-home"
  end

  test "schemes other than http and https are refused", %{http: http, allow: allow} do
    assert {{:ok, %{"status" => 0, "body" => ""}}, stats} =
             Runtime.invoke_with_stats(http, %{url: "file:///etc/passwd"}, http_allow: allow)

    assert %Runtime.Stats{http_refused: 1, http_failed: 0} = stats
  end

  test "a response body over the cap is cut off as a failure", %{
    base: base,
    http: http,
    allow: allow
  } do
    assert {:ok, %{"status" => 200, "body" => body}} =
             invoke(http, %{url: base <> "/bytes/500000"}, allow)

    assert byte_size(body) == 500_000
    # 8 MiB cap; the body is also larger than the guest's 1 MiB buffer
    assert invoke(http, %{url: base <> "/bytes/9000000"}, allow) ==
             {:ok, %{"status" => 0, "body" => ""}}
  end

  test "an endless chunked body is cut off", %{base: base, http: http, allow: allow} do
    assert invoke(http, %{url: base <> "/endless"}, allow) ==
             {:ok, %{"status" => 0, "body" => ""}}
  end

  test "a lying Content-Length fails cleanly", %{base: base, http: http, allow: allow} do
    assert invoke(http, %{url: base <> "/lying"}, allow) == {:ok, %{"status" => 0, "body" => ""}}
  end

  test "a slow server cannot hold the invocation past its timeout", %{
    base: base,
    http: http,
    allow: allow
  } do
    started = System.monotonic_time(:millisecond)
    result = invoke(http, %{url: base <> "/sleep/5000"}, allow, timeout: 300)
    elapsed = System.monotonic_time(:millisecond) - started
    # the request gets the time left; then the guest resumes past its deadline
    assert result in [{:error, :timeout}, {:ok, %{"status" => 0, "body" => ""}}]
    assert elapsed < 2_000
  end

  test "the host writes the body where fl-wasm-rs points, even a dangling pointer", %{
    base: base,
    allow: allow
  } do
    module = compile!({:wat, "http_fl_wasm_rs"})
    assert invoke(module, base <> "/text/dangling", allow) == {:ok, "dangling"}
  end

  test "a body that does not fit in guest memory is a trap", %{base: base, allow: allow} do
    module = compile!({:wat, "http_out_of_bounds"})
    assert {:error, {:trap, message}} = invoke(module, base <> "/bytes/100", allow)
    assert message =~ "response body"
  end

  test "a waiting invocation holds no scheduler: many wait at once", %{
    base: base,
    http: http,
    allow: allow
  } do
    tasks =
      for _ <- 1..50 do
        Task.async(fn -> invoke(http, %{url: base <> "/sleep/300"}, allow) end)
      end

    started = System.monotonic_time(:millisecond)
    results = Task.await_many(tasks, 10_000)
    elapsed = System.monotonic_time(:millisecond) - started
    assert Enum.all?(results, &(&1 == {:ok, %{"status" => 200, "body" => "late"}}))
    # 50 requests of 300 ms each, all in flight together
    assert elapsed < 3_000
  end
end
