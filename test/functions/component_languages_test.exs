defmodule Functions.ComponentLanguagesTest do
  # Components written by others (wstd's own examples, FunLess's way of
  # working) and in other languages: Python (componentize-py) and
  # JavaScript (componentize-js), as the test guests probe_py and probe_js
  # (functions/python/hello_py and functions/js/hello_js with the hooks the
  # tests call). Their builds: scripts/componentize and
  # scripts/foreign-guests, run by test_helper.exs.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime

  @moduletag :capture_log
  # the Python and JavaScript components are 13 to 19 MB: compiling each
  # takes a while on 2 cores
  @moduletag timeout: 300_000

  setup_all do
    [py, js, wstd] =
      ~w(probe_py probe_js wstd_http_server)
      |> Enum.map(fn name -> Task.async(fn -> Runtime.compile(component!(name)) end) end)
      |> Task.await_many(240_000)
      |> Enum.map(fn {:ok, module} -> module end)

    %{py: py, js: js, wstd: wstd}
  end

  describe "wstd's own http_server example" do
    test "is an HTTP component (it exports wasi:cli/run too) and answers POST /",
         %{wstd: wstd} do
      assert wstd.kind == :http_component
      assert Runtime.invoke(wstd, %{"name" => "Ada"}) == {:ok, "Hello, wasi:http/proxy world!\n"}
    end
  end

  describe "a Python command (componentize-py)" do
    test "reads stdin and prints its result", %{py: py} do
      assert py.kind == :cli_component
      assert Runtime.invoke(py, "Ada") == {:ok, "Hello Ada!"}
      assert Runtime.invoke(py, %{"name" => "Core"}) == {:ok, "Hello Core!"}
      assert Runtime.invoke(py, %{"text" => "plain words"}) == {:ok, "plain words"}
    end

    test "an exception is a trap carrying its traceback's end", %{py: py} do
      assert {:error, {:trap, message}} = Runtime.invoke(py, %{"panic" => "the sky fell"})
      assert message =~ "RuntimeError: the sky fell"
    end

    test "sys.exit is an exec error carrying stderr", %{py: py} do
      assert {:error, {:exec_error, message}} = Runtime.invoke(py, %{"exit" => 3})
      assert message =~ "exiting with status 3, as asked"
    end

    test "the timeout and the memory limit hold", %{py: py} do
      assert Runtime.invoke(py, %{"spin" => true}, timeout: 200) == {:error, :timeout}
      assert Runtime.invoke(py, %{"sleep_ms" => 60_000}, timeout: 200) == {:error, :timeout}
      assert Runtime.invoke(py, %{"grow_mb" => 4}) == {:ok, %{"grew_mb" => 4}}

      assert {:error, {:trap, _}} =
               Runtime.invoke(py, %{"grow_mb" => 64}, max_memory: 48 * 1024 * 1024)
    end
  end

  describe "a JavaScript HTTP handler (componentize-js)" do
    test "gets the arguments as its body and answers", %{js: js} do
      assert js.kind == :http_component
      assert Runtime.invoke(js, %{"name" => "Ada"}) == {:ok, %{"message" => "Hello, Ada!"}}
    end

    test "a thrown error is a trap carrying its message; a 500 is an exec error", %{js: js} do
      assert {:error, {:trap, message}} = Runtime.invoke(js, %{"panic" => "the sky fell"})
      assert message =~ "the sky fell"
      assert {:error, {:exec_error, "status 500: " <> _}} = Runtime.invoke(js, %{"status" => 500})
    end

    test "the timeout holds, spinning or waiting", %{js: js} do
      assert Runtime.invoke(js, %{"spin" => true}, timeout: 200) == {:error, :timeout}
      assert Runtime.invoke(js, %{"sleep_ms" => 60_000}, timeout: 200) == {:error, :timeout}
    end

    test "fetch goes through the same policy", %{js: js} do
      url = Worker.Test.HttpServer.start!() <> "/text/fetched"

      log =
        capture_log(fn ->
          assert {:error, {:exec_error, "status 502" <> _}} =
                   Runtime.invoke(js, %{"fetch" => url})
        end)

      assert log =~ "not public and not on the allow-list"
      refute_received {:http_request, _}

      assert Runtime.invoke(js, %{"fetch" => url}, http_allow: ["127.0.0.1"]) ==
               {:ok, %{"status" => 200, "body" => "fetched"}}

      assert_received {:http_request, %{path: "/text/fetched"}}
    end
  end
end
