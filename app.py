"""The Gradio app as a script: `python app.py --model DIR --catalog PATH` (the same as `fashion-assistant serve`)."""

from assistant.webapp import main

if __name__ == "__main__":
    main()
