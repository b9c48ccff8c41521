defmodule Functions.GoTest do
  # Go, built by scripts/go-guests with the Go 1.27 that scripts/setup
  # installs: functions/go/hello_go (FunLess's ABI through //go:wasmimport
  # and //go:wasmexport, built as a WASI reactor) and
  # functions/go/hello_go_command (a WASI command). What makes a reactor
  # run, _initialize, is tested on its own in reactor_test.exs.
  use ExUnit.Case, async: true

  import Worker.Test.Fixtures
  alias Worker.Runtime

  @moduletag :capture_log
  # a Go module is 4.5 MB: compiling one takes a few seconds here
  @moduletag timeout: 120_000

  setup_all do
    [reactor, command] =
      ~w(hello_go hello_go_command)
      |> Enum.map(fn name -> Task.async(fn -> compile!(name) end) end)
      |> Task.await_many(100_000)

    %{reactor: reactor, command: command}
  end

  describe "a Go function with FunLess's ABI" do
    test "is a FunLess module, and answers through __insert_response", %{reactor: go} do
      assert go.kind == :funless
      assert Runtime.invoke(go, %{"name" => "Ada"}) == {:ok, %{"payload" => "Hello Ada!"}}
      assert Runtime.invoke(go, "Ada") == {:ok, %{"payload" => "Hello World!"}}
    end

    test "runs again and again, a fresh runtime each time, and side by side", %{reactor: go} do
      results =
        1..8
        |> Enum.map(fn i -> Task.async(fn -> Runtime.invoke(go, %{"name" => "#{i}"}) end) end)
        |> Task.await_many(30_000)

      assert results == for(i <- 1..8, do: {:ok, %{"payload" => "Hello #{i}!"}})
    end

    test "loads from its artifact", %{reactor: go} do
      assert {:ok, artifact} = Runtime.serialize(go)
      assert {:ok, loaded} = Runtime.load(artifact, go.wasm_bytes)
      assert Runtime.invoke(loaded, %{"name" => "again"}) == {:ok, %{"payload" => "Hello again!"}}
    end
  end

  describe "a Go WASI command" do
    test "reads JSON on stdin and prints its result", %{command: go} do
      assert go.kind == :wasi_command
      assert Runtime.invoke(go, "Ada") == {:ok, "Hello Ada!"}
      assert Runtime.invoke(go, %{"name" => "Core"}) == {:ok, "Hello Core!"}
      assert Runtime.invoke(go, %{}) == {:ok, "Hello World!"}
    end

    test "stops at its deadline", %{command: go} do
      assert Runtime.invoke(go, "Ada", timeout: 0) == {:error, :timeout}
    end
  end
end
