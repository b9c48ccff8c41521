defmodule Worker.Runtime.HttpTest do
  # Outbound HTTP from a function, against a server on loopback.
  use ExUnit.Case, async: true
  @moduletag :capture_log

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime
  alias Worker.Test.HttpServer

  setup do
    %{base: HttpServer.start!(), http: compile!("http")}
  end

  test "GET returns the status and body", %{base: base, http: http} do
    assert Runtime.invoke(http, %{url: base <> "/text/hi%20there"}) ==
             {:ok, %{"status" => 200, "body" => "hi there"}}

    assert_received {:http_request, %{method: "GET", path: "/text/hi%20there"}}
  end

  test "each method is sent as the ABI's code says", %{base: base, http: http} do
    for method <- ~w(GET POST PUT DELETE) do
      assert {:ok, %{"status" => 200}} =
               Runtime.invoke(http, %{url: base <> "/echo", method: method})

      assert_received {:http_request, %{method: ^method}}
    end
  end

  test "headers and body reach the server", %{base: base, http: http} do
    args = %{
      url: base <> "/echo",
      method: "POST",
      headers: %{"X-Trace" => "abc:def", "Content-Type" => "application/json"},
      body: ~s({"k":1})
    }

    assert {:ok, %{"status" => 200, "body" => body}} = Runtime.invoke(http, args)
    assert_received {:http_request, request}
    # split at the first colon only
    assert request.headers["x-trace"] == "abc:def"
    assert request.headers["content-type"] == "application/json"
    assert request.body == ~s({"k":1})
    assert body =~ ~s("method":"POST")
  end

  test "the status is passed through, not treated as a failure", %{base: base, http: http} do
    assert Runtime.invoke(http, %{url: base <> "/status/404"}) ==
             {:ok, %{"status" => 404, "body" => ""}}
  end

  test "the length written is in bytes, so multi-byte bodies arrive whole", %{
    base: base,
    http: http
  } do
    assert Runtime.invoke(http, %{url: base <> "/unicode"}) ==
             {:ok, %{"status" => 200, "body" => "héllo wörld ✓"}}
  end

  test "redirects are followed", %{base: base, http: http} do
    assert Runtime.invoke(http, %{url: base <> "/redirect"}) ==
             {:ok, %{"status" => 200, "body" => "redirected"}}
  end

  test "a failed request gives status 0 and an empty body, and is logged", %{http: http} do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)

    log =
      capture_log(fn ->
        assert Runtime.invoke(http, %{url: "http://127.0.0.1:#{port}/nobody-home"}) ==
                 {:ok, %{"status" => 0, "body" => ""}}
      end)

    assert log =~ "http request failed"
    assert log =~ "/nobody-home"
  end

  test "schemes other than http and https are refused", %{http: http} do
    assert Runtime.invoke(http, %{url: "file:///etc/passwd"}) ==
             {:ok, %{"status" => 0, "body" => ""}}
  end

  test "a response body over the cap is cut off as a failure", %{base: base, http: http} do
    assert {:ok, %{"status" => 200, "body" => body}} =
             Runtime.invoke(http, %{url: base <> "/bytes/500000"})

    assert byte_size(body) == 500_000
    # 8 MiB cap; the body is also larger than the guest's 1 MiB buffer
    assert Runtime.invoke(http, %{url: base <> "/bytes/9000000"}) ==
             {:ok, %{"status" => 0, "body" => ""}}
  end

  test "an endless chunked body is cut off", %{base: base, http: http} do
    assert Runtime.invoke(http, %{url: base <> "/endless"}) ==
             {:ok, %{"status" => 0, "body" => ""}}
  end

  test "a lying Content-Length fails cleanly", %{base: base, http: http} do
    assert Runtime.invoke(http, %{url: base <> "/lying"}) == {:ok, %{"status" => 0, "body" => ""}}
  end

  test "a slow server cannot hold the invocation past its timeout", %{base: base, http: http} do
    started = System.monotonic_time(:millisecond)
    result = Runtime.invoke(http, %{url: base <> "/sleep/5000"}, timeout: 300)
    elapsed = System.monotonic_time(:millisecond) - started
    # the request gets the time left; then the guest resumes past its deadline
    assert result in [{:error, :timeout}, {:ok, %{"status" => 0, "body" => ""}}]
    assert elapsed < 2_000
  end

  test "the host writes the body where fl-wasm-rs points, even a dangling pointer", %{base: base} do
    module = compile!({:wat, "http_fl_wasm_rs"})
    assert Runtime.invoke(module, base <> "/text/dangling") == {:ok, "dangling"}
  end

  test "a body that does not fit in guest memory is a trap", %{base: base} do
    module = compile!({:wat, "http_out_of_bounds"})
    assert {:error, {:trap, message}} = Runtime.invoke(module, base <> "/bytes/100")
    assert message =~ "response body"
  end

  test "a waiting invocation holds no scheduler: many wait at once", %{base: base, http: http} do
    tasks =
      for _ <- 1..50 do
        Task.async(fn -> Runtime.invoke(http, %{url: base <> "/sleep/300"}) end)
      end

    started = System.monotonic_time(:millisecond)
    results = Task.await_many(tasks, 10_000)
    elapsed = System.monotonic_time(:millisecond) - started
    assert Enum.all?(results, &(&1 == {:ok, %{"status" => 200, "body" => "late"}}))
    # 50 requests of 300 ms each, all in flight together
    assert elapsed < 3_000
  end
end
