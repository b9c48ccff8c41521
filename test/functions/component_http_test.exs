defmodule Functions.ComponentHttpTest do
  # Outbound wasi:http from components, under the policy and caps of
  # __http_request (native/worker_runtime/src/outbound.rs): the host
  # resolves, checks, and connects to the checked address itself. One
  # request an invocation from the example functions/components/fetch_http,
  # several from the test guest probe_fetch.
  use ExUnit.Case, async: true
  @moduletag :capture_log

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime
  alias Worker.Test.HttpServer

  setup_all do
    {:ok, fetch} = Runtime.compile(component!("fetch_http"))
    {:ok, probe} = Runtime.compile(component!("probe_fetch"))
    %{fetch: fetch, probe: probe}
  end

  setup do
    base = HttpServer.start!()
    %{port: URI.parse(base).port}
  end

  defp refused?(result) do
    match?({:error, {:exec_error, "status 502: " <> _}}, result) and
      elem(elem(result, 1), 1) =~ "DestinationIpProhibited"
  end

  # the same spellings as http_policy_test's, refused before any connection
  for {label, url} <- HttpServer.non_public_urls() do
    test "refuses #{label}, and nothing reaches it", %{port: port, fetch: fetch} do
      url = String.replace(unquote(url), "PORT", Integer.to_string(port))

      log =
        capture_log(fn ->
          {result, stats} = Runtime.invoke_with_stats(fetch, %{url: url}, timeout: 5_000)
          assert refused?(result), inspect(result)
          assert {stats.http_ok, stats.http_failed, stats.http_refused} == {0, 0, 1}
        end)

      assert log =~ "not public" or log =~ "no public address"
      refute_received {:http_request, _}
    end
  end

  test "an allow-listed host is reachable, by host or by host and port", %{
    port: port,
    fetch: fetch
  } do
    url = "http://127.0.0.1:#{port}/text/allowed"
    ok = {:ok, %{"status" => 200, "body" => "allowed"}}
    assert Runtime.invoke(fetch, %{url: url}, http_allow: ["127.0.0.1"]) == ok
    assert_received {:http_request, %{method: "GET", path: "/text/allowed"}}
    assert Runtime.invoke(fetch, %{url: url}, http_allow: ["127.0.0.1:#{port}"]) == ok
    assert refused?(Runtime.invoke(fetch, %{url: url}, http_allow: ["127.0.0.1:#{port + 1}"]))
    # a name on the list may resolve to a private address
    assert Runtime.invoke(fetch, %{url: "http://localhost:#{port}/text/allowed"},
             http_allow: ["localhost"]
           ) == ok
  end

  test "a redirect is the guest's to follow, and its target is checked like any URL", %{
    port: port,
    probe: probe
  } do
    other = HttpServer.start!()
    target = other <> "/text/should-not-arrive"
    url = "http://127.0.0.1:#{port}/goto/#{URI.encode_www_form(target)}"
    allow = ["127.0.0.1:#{port}"]

    assert {:ok, %{"results" => [first, second]}} =
             Runtime.invoke(probe, %{urls: [url, target]}, http_allow: allow)

    # wasi:http does not follow it: the guest sees the 302...
    assert first["status"] == 302
    # ...and its own request to the target is refused
    assert second["error"] =~ "DestinationIpProhibited"
    assert_received {:http_request, %{path: "/goto/" <> _}}
    refute_received {:http_request, %{path: "/text/should-not-arrive"}}
  end

  test "the request cap holds per invocation; the outcomes are counted", %{
    port: port,
    probe: probe
  } do
    urls = for i <- 1..21, do: "http://127.0.0.1:#{port}/text/n#{i}"

    {{:ok, %{"results" => results}}, stats} =
      Runtime.invoke_with_stats(probe, %{urls: urls}, http_allow: ["127.0.0.1"])

    assert Enum.count(results, &(&1["status"] == 200)) == 20, inspect(results)
    assert List.last(results)["error"] =~ "DestinationIpProhibited"
    assert {stats.http_ok, stats.http_failed, stats.http_refused} == {20, 0, 1}
  end

  test "a request's body reaches the server; a response over the cap fails", %{
    port: port,
    fetch: fetch
  } do
    allow = [http_allow: ["127.0.0.1"]]
    echo = "http://127.0.0.1:#{port}/echo"

    assert {:ok, %{"status" => 200, "body" => body}} =
             Runtime.invoke(fetch, %{url: echo, method: "POST", body: "sent by wasi:http"}, allow)

    assert body =~ "sent by wasi:http"

    big = "http://127.0.0.1:#{port}/bytes/#{9 * 1024 * 1024}"
    assert {:error, {:exec_error, message}} = Runtime.invoke(fetch, %{url: big}, allow)
    assert message =~ "HttpResponseBodySize"
  end

  test "a slow server is bounded by the invocation's time", %{port: port, fetch: fetch} do
    url = "http://127.0.0.1:#{port}/sleep/5000"

    assert Runtime.invoke(fetch, %{url: url}, http_allow: ["127.0.0.1"], timeout: 300) ==
             {:error, :timeout}
  end
end
