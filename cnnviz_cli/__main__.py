from cnnviz_cli.cli import main

if __name__ == "__main__":  # decoding workers may import this module
    main()
