from voxmesh.core.service import run


def main() -> None:
    from voxmesh_edge.app import main as serve

    run("media-edge", serve)


if __name__ == "__main__":
    main()
