defmodule Worker.NodeInfoTest do
  # Worker.NodeInfo is one per node, found through :persistent_term. Each
  # test stops the application's, starts its own on a data directory of its
  # own, and puts the application's back afterwards.
  use ExUnit.Case, async: false

  alias Worker.{NodeInfo, Store}

  @moduletag :tmp_dir

  setup %{tmp_dir: dir} do
    env =
      for key <- [:data_dir, :worker_name, :worker_tag],
          do: {key, Application.get_env(:worker, key)}

    sup = Worker.Application.supervisor()
    :ok = Supervisor.terminate_child(sup, NodeInfo)

    on_exit(fn ->
      for {key, value} <- env, do: Application.put_env(:worker, key, value)
      {:ok, _} = Supervisor.restart_child(sup, NodeInfo)
    end)

    Application.put_env(:worker, :data_dir, dir)
    Application.delete_env(:worker, :worker_name)
    Application.delete_env(:worker, :worker_tag)
    :ok
  end

  defp start! do
    start_supervised!(NodeInfo)
    NodeInfo.get()
  end

  defp restart! do
    :ok = stop_supervised(NodeInfo)
    start!()
  end

  defp bad_request?(result),
    do: match?({:error, {:bad_request, reason}} when is_binary(reason), result)

  describe "until set" do
    test "the long name is the node name, and the tag the long name" do
      name = Atom.to_string(node())
      assert start!() == {name, name}
    end

    test "the long name is FL_WORKER_NAME, and the tag the long name" do
      Application.put_env(:worker, :worker_name, "from-env")
      assert start!() == {"from-env", "from-env"}
    end

    test "the tag is FL_WORKER_TAG" do
      Application.put_env(:worker, :worker_name, "from-env")
      Application.put_env(:worker, :worker_tag, "tag-env")
      assert start!() == {"from-env", "tag-env"}

      Application.delete_env(:worker, :worker_name)
      assert restart!() == {Atom.to_string(node()), "tag-env"}
    end
  end

  describe "set/2" do
    test "sets the long name, the tag, or both; nil keeps a value" do
      {name, _} = start!()
      assert NodeInfo.set("long", nil) == {:ok, {"long", name}}
      assert NodeInfo.get() == {"long", name}
      assert NodeInfo.set(nil, "edge") == {:ok, {"long", "edge"}}
      assert NodeInfo.get() == {"long", "edge"}
      assert NodeInfo.set("both", "set") == {:ok, {"both", "set"}}
      assert NodeInfo.set(nil, nil) == {:ok, {"both", "set"}}
      assert NodeInfo.get() == {"both", "set"}
    end

    test "persists what it sets, which then wins over the environment" do
      start!()
      assert {:ok, {"long", "edge"}} = NodeInfo.set("long", "edge")
      assert Store.get_term("node_info") == {:ok, {"long", "edge"}}

      Application.put_env(:worker, :worker_name, "from-env")
      Application.put_env(:worker, :worker_tag, "tag-env")
      assert restart!() == {"long", "edge"}
    end

    test "takes UTF-8 text of 1 to 255 bytes" do
      start!()

      for value <- [
            "x",
            String.duplicate("a", 255),
            String.duplicate("é", 127) <> "a",
            "ünïcødé 名前 🙂"
          ] do
        assert NodeInfo.set(value, value) == {:ok, {value, value}}
        assert NodeInfo.get() == {value, value}
      end
    end

    test "refuses anything else, and the previous value stays" do
      start!()
      assert {:ok, {"good", "tag"}} = NodeInfo.set("good", "tag")
      stored = Store.get_term("node_info")

      bad = [
        "",
        String.duplicate("a", 256),
        String.duplicate("é", 128),
        <<0xFF, 0xFE>>,
        "a\nb",
        "tab\there",
        <<0>>,
        "del\x7F",
        :atom,
        42,
        ~c"charlist"
      ]

      for value <- bad do
        assert bad_request?(NodeInfo.set(value, nil)), "long name #{inspect(value)} was taken"
        assert bad_request?(NodeInfo.set(nil, value)), "tag #{inspect(value)} was taken"
        # a good value beside a bad one is not taken either
        assert bad_request?(NodeInfo.set("other", value))
        assert bad_request?(NodeInfo.set(value, "other"))
        assert NodeInfo.get() == {"good", "tag"}
      end

      assert Store.get_term("node_info") == stored
    end

    test "a value that cannot be persisted is not taken", %{tmp_dir: dir} do
      start!()
      assert {:ok, {"good", "tag"}} = NodeInfo.set("good", "tag")

      # a file where the data directory should be
      blocked = Path.join(dir, "blocked")
      File.write!(blocked, "")
      Application.put_env(:worker, :data_dir, Path.join(blocked, "data"))

      assert {:error, _} = NodeInfo.set("new", "new")
      assert NodeInfo.get() == {"good", "tag"}

      Application.put_env(:worker, :data_dir, dir)
      assert Store.get_term("node_info") == {:ok, {"good", "tag"}}
    end
  end

  test "a damaged or odd file counts as nothing set" do
    Application.put_env(:worker, :worker_name, "from-env")
    File.mkdir_p!(Store.dir())

    for odd <- [{"name"}, {"name", :tag}, {1, 2}, "name"] do
      assert Store.put_term("node_info", odd) == :ok
      assert restart_or_start!() == {"from-env", "from-env"}
    end

    path = Path.join(Store.dir(), "node_info")
    assert Store.put_term("node_info", {"stored", "tag"}) == :ok
    File.write!(path, binary_part(File.read!(path), 0, 30))

    ExUnit.CaptureLog.capture_log(fn ->
      assert restart_or_start!() == {"from-env", "from-env"}
    end)
  end

  test "an unknown request is refused, and the server keeps its state" do
    pid = start_supervised!(NodeInfo)
    assert {:ok, _} = NodeInfo.set("kept", "kept")

    ExUnit.CaptureLog.capture_log(fn ->
      assert GenServer.call(pid, :what) == {:error, {:bad_request, "unknown request"}}
      GenServer.cast(pid, :what)
      send(pid, :what)
      # answered after the two above were handled
      assert NodeInfo.set(nil, "still") == {:ok, {"kept", "still"}}
    end)

    assert Process.alive?(pid)
  end

  defp restart_or_start! do
    _ = stop_supervised(NodeInfo)
    start!()
  end
end
