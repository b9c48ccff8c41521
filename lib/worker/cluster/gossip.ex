defmodule Worker.Cluster.Gossip do
  @moduledoc """
  libcluster's Gossip heartbeats, which FunLess's Core and workers use to
  find each other outside Kubernetes (`Cluster.Strategy.Gossip`): UDP
  datagrams, by default to the multicast group 233.252.1.32 on port 45892
  with a TTL of 1 (the local network), each `"heartbeat::"` followed by
  the external term format of `%{node: node_name}`.

  A node that hears a heartbeat connects to the node it names. Anyone on
  the network can send one, so a heartbeat is read here as untrusted
  input: at most #{512} bytes, exactly the shape libcluster sends (a map
  of one key, `:node`, whose value is an atom), and a node name of the
  form `name@host`. It is decoded by hand rather than with
  `:erlang.binary_to_term/2`: a new node's name is an atom this VM does
  not have yet, which `[:safe]` refuses, and which anything else would
  make for any text at all (atoms are never freed). The name comes back
  as text; `Worker.Cluster` decides which names become atoms.

  Heartbeats encrypted with a libcluster `secret` are not read (FunLess
  sets none); they are malformed here.
  """

  @max_packet 512
  @prefix "heartbeat::"
  # :erlang.term_to_binary/1's version byte, and the map tag
  @version 131
  @map 116
  # atom encodings: SMALL_ATOM_UTF8, ATOM_UTF8, SMALL_ATOM (Latin-1), ATOM (Latin-1)
  @small_atom_utf8 119
  @atom_utf8 118
  @small_atom 115
  @atom 100

  @default_port 45_892
  @default_group {233, 252, 1, 32}

  @doc "libcluster's port: 45892."
  def default_port, do: @default_port

  @doc "libcluster's multicast group: 233.252.1.32."
  def default_group, do: @default_group

  @doc "The largest heartbeat read, in bytes."
  def max_packet, do: @max_packet

  @doc "The heartbeat naming `node`, as libcluster sends it."
  @spec encode(node()) :: iodata()
  def encode(node) when is_atom(node), do: [@prefix | :erlang.term_to_binary(%{node: node})]

  @doc """
  The node name a heartbeat carries, as text; `{:error, :oversized}` past
  #{@max_packet} bytes, `{:error, :malformed}` for anything that is not a
  libcluster heartbeat naming a node.
  """
  @spec decode(binary()) :: {:ok, String.t()} | {:error, :oversized | :malformed}
  def decode(packet) when byte_size(packet) > @max_packet, do: {:error, :oversized}

  def decode(<<@prefix, @version, @map, 1::32, rest::binary>>) do
    with {:ok, "node", rest} <- atom_text(rest),
         {:ok, name, ""} <- atom_text(rest),
         true <- node_name?(name) do
      {:ok, name}
    else
      _ -> {:error, :malformed}
    end
  end

  def decode(_packet), do: {:error, :malformed}

  defp atom_text(<<@small_atom_utf8, n, text::binary-size(n), rest::binary>>),
    do: utf8(text, rest)

  defp atom_text(<<@atom_utf8, n::16, text::binary-size(n), rest::binary>>), do: utf8(text, rest)
  defp atom_text(<<@small_atom, n, text::binary-size(n), rest::binary>>), do: latin1(text, rest)
  defp atom_text(<<@atom, n::16, text::binary-size(n), rest::binary>>), do: latin1(text, rest)
  defp atom_text(_), do: :error

  defp utf8(text, rest), do: if(String.valid?(text), do: {:ok, text, rest}, else: :error)
  defp latin1(text, rest), do: {:ok, :unicode.characters_to_binary(text, :latin1), rest}

  # name@host, as Erlang's long and short names are: a name of letters,
  # digits, '_' and '-'; a host name or address
  defp node_name?(text),
    do: byte_size(text) <= 255 and Regex.match?(~r/\A[\w\-]{1,64}@[\w\-.:]{1,190}\z/u, text)

  @doc """
  Opens the socket heartbeats arrive on and leave from: bound to `if_addr`
  and `port`, shared with other nodes on the host (`SO_REUSEADDR`,
  `SO_REUSEPORT`), in the multicast `group` when it is one (with loopback
  on, so that nodes on one host hear each other, and a TTL of 1); a
  unicast or broadcast `group` is only sent to, as libcluster's
  `broadcast_only`. The socket delivers at most #{64} datagrams before
  it must be re-armed (`{:udp_passive, socket}`), so a flood waits in the
  kernel's buffer, where it is dropped, rather than in a mailbox.
  """
  @spec open(:inet.ip4_address(), :inet.port_number(), :inet.ip4_address()) ::
          {:ok, :gen_udp.socket()} | {:error, term()}
  def open(if_addr, port, group) do
    multicast =
      if multicast?(group),
        do: [multicast_ttl: 1, multicast_loop: true, add_membership: {group, if_addr}],
        else: []

    :gen_udp.open(
      port,
      [:binary, active: 64, ip: if_addr, reuseaddr: true, broadcast: true, recbuf: 65_536] ++
        reuse_port() ++ multicast
    )
  end

  @doc "Lets the socket deliver the next datagrams."
  def rearm(socket), do: :inet.setopts(socket, active: 64)

  @doc "Sends this node's heartbeat to `group` on `port`."
  def send_heartbeat(socket, group, port), do: :gen_udp.send(socket, group, port, encode(node()))

  defp multicast?({a, _, _, _}), do: a in 224..239

  # SO_REUSEPORT, so that several nodes on one host listen on one port
  defp reuse_port do
    case :os.type() do
      {:unix, :linux} -> [{:raw, 1, 15, <<1::native-32>>}]
      {:unix, _bsd} -> [{:raw, 0xFFFF, 0x0200, <<1::native-32>>}]
      _ -> []
    end
  end
end
