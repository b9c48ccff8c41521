defmodule Worker.JobTest do
  # Request processes of this node's application, reached through :worker
  # as the Core reaches it, without distribution.
  use ExUnit.Case, async: false

  @moduletag :capture_log

  import Worker.Test.Fixtures
  alias Worker.Test.Helpers
  alias Worker.Job

  setup do
    name = Helpers.unique_name("h")
    hello = %{name: name, module: "handler_test", hash: "h", code: wasm!("hello")}
    %{hello: hello, without_code: %{hello | code: nil}}
  end

  defp call(server, request), do: GenServer.call(server, request, 30_000)

  defp await_down(pid) do
    ref = Process.monitor(pid)
    assert_receive {:DOWN, ^ref, :process, ^pid, _}, 5_000
  end

  test "a code handler runs the original arguments once it gets the code", context do
    before = Job.info()

    assert {:error, :code_not_found, handler} =
             call(:worker, {:invoke, context.without_code, %{"name" => "Handler"}})

    # it holds the arguments, and a request slot
    assert Job.info().handler_bytes > before.handler_bytes
    assert Job.info().requests > before.requests

    # calls of any other kind are refused, and it keeps waiting
    assert call(handler, {:store_function, context.hello}) ==
             {:error, {:bad_request, "expected {:invoke, function_with_code}"}}

    send(handler, :noise)

    assert call(handler, {:invoke, context.hello}) == {:ok, %{"payload" => "Hello Handler!"}}
    await_down(handler)
    assert Job.info().handler_bytes == before.handler_bytes
    assert Job.info().requests == before.requests

    # the code was stored: the next invocation needs none
    assert call(:worker, {:invoke, context.without_code, %{}}) ==
             {:ok, %{"payload" => "Hello World!"}}
  end

  test ":worker keeps its message queue off its heap" do
    assert Process.info(Process.whereis(:worker), :message_queue_data) ==
             {:message_queue_data, :off_heap}
  end

  test "a code handler sent a bad function answers that, and ends", context do
    assert {:error, :code_not_found, handler} =
             call(:worker, {:invoke, context.without_code, %{}})

    assert call(handler, {:invoke, context.without_code}) ==
             {:error, {:bad_request, "code is missing"}}

    await_down(handler)
  end

  test "a code handler never called goes away after FL_HANDLER_TIMEOUT_MS", context do
    previous = Application.fetch_env!(:worker, :handler_timeout_ms)
    Application.put_env(:worker, :handler_timeout_ms, 50)
    on_exit(fn -> Application.put_env(:worker, :handler_timeout_ms, previous) end)
    before = Job.info()

    assert {:error, :code_not_found, handler} =
             call(:worker, {:invoke, context.without_code, %{}})

    await_down(handler)
    assert Job.info().handler_bytes == before.handler_bytes
    assert Job.info().requests == before.requests
  end

  test "a WASI command is stored and invoked like any function, through a code handler too" do
    # the example, with a hook for an exit status
    code = wasm!("probe_command")

    command = %{
      name: Helpers.unique_name("c"),
      module: "m",
      hash: "c",
      code: code
    }

    without_code = %{command | code: nil}

    assert {:error, :code_not_found, handler} = call(:worker, {:invoke, without_code, "Handler"})
    assert call(handler, {:invoke, command}) == {:ok, "Hello Handler!"}
    assert call(:worker, {:invoke, without_code, %{"name" => "Core"}}) == {:ok, "Hello Core!"}

    assert {:error, {:exec_error, "exited with status 2" <> _}} =
             call(:worker, {:invoke, without_code, %{"exit" => 2}})
  end

  test "store, update and delete, each in a process of its own", context do
    assert call(:worker, {:store_function, context.hello}) == :ok

    updated = %{context.hello | hash: "h2", code: wasm!("echo")}
    assert call(:worker, {:update_function, "h", updated}) == :ok
    # the old hash is gone, the new one runs
    assert {:error, :code_not_found, handler} =
             call(:worker, {:invoke, context.without_code, %{}})

    Process.exit(handler, :kill)

    assert call(:worker, {:invoke, %{updated | code: nil}, %{"a" => 1}}) == {:ok, %{"a" => 1}}
    assert call(:worker, {:delete_function, updated.name, updated.module, "h2"}) == :ok

    assert {:error, :code_not_found, handler} =
             call(:worker, {:invoke, %{updated | code: nil}, %{}})

    Process.exit(handler, :kill)
  end
end
